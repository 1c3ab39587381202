-- Who works on which partition, decided in Postgres rather than by Kafka's group coordinator.
-- Each allocator and projector process beats every IPAM_OWNERSHIP_BEAT_SECONDS: it keeps its
-- member row alive and renews a lease on each partition it works.  A member killed with kill -9
-- stops beating; its rows expire after IPAM_OWNERSHIP_TTL_SECONDS and a survivor takes its
-- partitions on its next beat (seconds, where a consumer group needs the session timeout plus a
-- JoinGroup).  The lease only says who should work; who may write is still the epoch and fence
-- in ipam_store.partitions, so two members that both believe they hold a partition cannot both
-- have their events applied.

CREATE TABLE ipam_store.members (
    "group"    text NOT NULL,            -- IPAM_GROUP_PREFIX-allocator or -projector
    member     text NOT NULL,            -- host/role-random, as in ipam_store.epochs.owner
    alive_until timestamptz NOT NULL,
    PRIMARY KEY ("group", member)
);

CREATE TABLE ipam_store.partition_leases (
    "group"    text NOT NULL,
    partition  integer NOT NULL,
    member     text NOT NULL,
    expires_at timestamptz NOT NULL,
    taken_at   timestamptz NOT NULL DEFAULT now(),  -- when this member got the lease
    ready_at   timestamptz,                         -- when it had loaded the partition and began working it
    PRIMARY KEY ("group", partition)
);
