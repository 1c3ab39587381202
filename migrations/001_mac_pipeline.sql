-- Tables live in ipam_store (written only by the service); admins read the views in ipam.

CREATE SCHEMA IF NOT EXISTS ipam_store;
CREATE SCHEMA IF NOT EXISTS ipam;

CREATE TABLE ipam_store.meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE ipam_store.pools (
    name          text PRIMARY KEY,
    first_mac     macaddr,
    last_mac      macaddr,
    range_lo      bigint,          -- first_mac as an integer, for the overlap constraint
    range_hi      bigint,
    lo_ordinal    bigint,          -- unicast ordinal of first_mac (cursor arithmetic)
    size          bigint NOT NULL, -- unicast addresses in the range (0 for the external pool)
    namespaces    text[] NOT NULL DEFAULT '{}',
    is_default    boolean NOT NULL DEFAULT false,
    external      boolean NOT NULL DEFAULT false,
    start_offset  bigint NOT NULL DEFAULT 0,
    cursor        bigint NOT NULL DEFAULT 0,   -- next-fit cursor (ordinal offset), kept by the projector
    partition     integer NOT NULL,
    created_at    timestamptz NOT NULL,
    command_id    text NOT NULL,
    CONSTRAINT pools_no_overlap EXCLUDE USING gist (int8range(range_lo, range_hi, '[]') WITH &&)
        WHERE (range_lo IS NOT NULL)
);
CREATE UNIQUE INDEX pools_one_default ON ipam_store.pools (is_default) WHERE is_default;
CREATE UNIQUE INDEX pools_one_external ON ipam_store.pools (external) WHERE external;

-- The last guard: a MAC is held by at most one live interface, an interface holds at most one MAC per pool.
CREATE TABLE ipam_store.mac_leases (
    mac         macaddr PRIMARY KEY,
    pool        text NOT NULL REFERENCES ipam_store.pools (name),
    namespace   text NOT NULL,
    vm          text NOT NULL,
    vm_uid      text NOT NULL,
    interface   text NOT NULL,
    static      boolean NOT NULL,
    since       timestamptz NOT NULL,
    command_id  text NOT NULL,
    CONSTRAINT mac_leases_one_per_interface UNIQUE (pool, namespace, vm, vm_uid, interface)
);
CREATE INDEX mac_leases_by_vm ON ipam_store.mac_leases (namespace, vm);

CREATE TABLE ipam_store.mac_quarantine (
    mac         macaddr PRIMARY KEY,
    pool        text NOT NULL REFERENCES ipam_store.pools (name),
    until       timestamptz NOT NULL,
    released_at timestamptz NOT NULL,
    namespace   text NOT NULL,
    vm          text NOT NULL,
    vm_uid      text NOT NULL,
    interface   text NOT NULL
);
CREATE INDEX mac_quarantine_by_pool ON ipam_store.mac_quarantine (pool, until);

-- Append-only: every projected event, and notes from the pipeline itself (zombie drops, log resets).
CREATE TABLE ipam_store.ledger (
    id          bigserial PRIMARY KEY,
    generation  integer NOT NULL,
    partition   integer NOT NULL,
    "offset"    bigint,
    epoch       bigint NOT NULL,
    seq         bigint NOT NULL,
    at          timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    type        text NOT NULL,
    command_id  text NOT NULL,
    pool        text,
    mac         macaddr,
    namespace   text,
    vm          text,
    vm_uid      text,
    interface   text,
    body        jsonb NOT NULL
);
CREATE UNIQUE INDEX ledger_position ON ipam_store.ledger (generation, partition, "offset") WHERE "offset" IS NOT NULL;
CREATE INDEX ledger_by_mac ON ipam_store.ledger (mac, at) WHERE mac IS NOT NULL;
CREATE INDEX ledger_by_vm ON ipam_store.ledger (namespace, vm, at) WHERE vm IS NOT NULL;
CREATE INDEX ledger_by_command ON ipam_store.ledger (command_id);

CREATE FUNCTION ipam_store.ledger_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ipam_store.ledger is append-only';
END $$;
CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE ON ipam_store.ledger
    FOR EACH ROW EXECUTE FUNCTION ipam_store.ledger_is_append_only();

-- One row per partition of the commands/events topics: who owns it and how far it is.
CREATE TABLE ipam_store.partitions (
    partition        integer PRIMARY KEY,
    generation       integer NOT NULL DEFAULT 1,  -- bumped when the broker's log was reset
    epoch            bigint NOT NULL DEFAULT 0,   -- bumped by each allocator taking the partition
    fence_offset     bigint NOT NULL DEFAULT 0,   -- events of older epochs at or after this offset are dropped
    events_offset    bigint NOT NULL DEFAULT 0,   -- next events offset to project
    last_epoch       bigint,                      -- identity of the record at events_offset - 1
    last_seq         bigint,
    commands_offset  bigint NOT NULL DEFAULT 0,   -- next commands offset to decide
    last_command_id  text,                        -- identity of the command at commands_offset - 1
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Each allocator epoch of a partition and the events offset it caught up to before producing.
CREATE TABLE ipam_store.epochs (
    partition     integer NOT NULL,
    epoch         bigint NOT NULL,
    generation    integer NOT NULL,
    fence_offset  bigint,                        -- NULL until the owner finished catching up
    owner         text NOT NULL,
    claimed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (partition, epoch)
);

-- The answer to each command (and the dedupe store behind retries with the same command id).
CREATE TABLE ipam_store.command_outcomes (
    command_id  text PRIMARY KEY,
    partition   integer NOT NULL,
    events      jsonb NOT NULL,
    complete    boolean NOT NULL,
    decided_at  timestamptz NOT NULL
);
CREATE INDEX command_outcomes_by_age ON ipam_store.command_outcomes (decided_at);

-- ---- the admin's views ---------------------------------------------------------------

CREATE VIEW ipam.mac_leases AS
SELECT l.mac, l.pool, l.namespace, l.vm, l.vm_uid, l.interface, l.static, l.since
FROM ipam_store.mac_leases l;
COMMENT ON VIEW ipam.mac_leases IS 'One row per live MAC lease: which interface of which VM holds which MAC.';
COMMENT ON COLUMN ipam.mac_leases.mac IS 'The leased MAC address (compare with any MAC spelling: ''02-00-00-00-00-01'' works).';
COMMENT ON COLUMN ipam.mac_leases.pool IS 'Pool the MAC was leased from.';
COMMENT ON COLUMN ipam.mac_leases.namespace IS 'Namespace of the VirtualMachine.';
COMMENT ON COLUMN ipam.mac_leases.vm IS 'Name of the VirtualMachine.';
COMMENT ON COLUMN ipam.mac_leases.vm_uid IS 'metadata.uid of the VirtualMachine (one incarnation of that name).';
COMMENT ON COLUMN ipam.mac_leases.interface IS 'Interface name in spec.template.spec.domain.devices.interfaces.';
COMMENT ON COLUMN ipam.mac_leases.static IS 'True when the MAC was asked for explicitly rather than picked by ipam.';
COMMENT ON COLUMN ipam.mac_leases.since IS 'When the lease was granted.';

CREATE VIEW ipam.pool_usage AS
SELECT p.name AS pool,
       CASE WHEN p.external THEN 'external' ELSE p.first_mac::text || '-' || p.last_mac::text END AS range,
       p.size,
       coalesce(l.used, 0) AS used,
       coalesce(q.quarantined, 0) AS quarantined,
       CASE WHEN p.external THEN NULL ELSE p.size - coalesce(l.used, 0) - coalesce(q.quarantined, 0) END AS free,
       CASE WHEN p.external OR p.size = 0 THEN NULL
            ELSE round(100.0 * (coalesce(l.used, 0) + coalesce(q.quarantined, 0)) / p.size, 2) END AS percent,
       p.namespaces,
       p.is_default,
       p.created_at
FROM ipam_store.pools p
LEFT JOIN (SELECT pool, count(*) AS used FROM ipam_store.mac_leases GROUP BY pool) l ON l.pool = p.name
LEFT JOIN (SELECT pool, count(*) AS quarantined FROM ipam_store.mac_quarantine WHERE until > now() GROUP BY pool) q
       ON q.pool = p.name;
COMMENT ON VIEW ipam.pool_usage IS 'One row per MAC pool: how big it is and how much of it is taken.';
COMMENT ON COLUMN ipam.pool_usage.pool IS 'Pool name.';
COMMENT ON COLUMN ipam.pool_usage.range IS 'first-last MAC of the pool, or ''external'' for the pool of MACs outside every range.';
COMMENT ON COLUMN ipam.pool_usage.size IS 'Unicast addresses in the range (multicast addresses are never handed out).';
COMMENT ON COLUMN ipam.pool_usage.used IS 'Live leases.';
COMMENT ON COLUMN ipam.pool_usage.quarantined IS 'Released addresses still in quarantine (not handed out again yet).';
COMMENT ON COLUMN ipam.pool_usage.free IS 'Addresses that can be handed out now.';
COMMENT ON COLUMN ipam.pool_usage.percent IS 'Percent of the pool that is used or quarantined.';
COMMENT ON COLUMN ipam.pool_usage.namespaces IS 'Namespaces bound to this pool (their requests without a pool use it).';
COMMENT ON COLUMN ipam.pool_usage.is_default IS 'True for the pool used by requests whose namespace is bound to no pool.';
COMMENT ON COLUMN ipam.pool_usage.created_at IS 'When the pool was created.';

CREATE VIEW ipam.history AS
SELECT g.at,
       CASE g.type
           WHEN 'MacLeased' THEN 'leased'
           WHEN 'MacLeaseReturned' THEN 'lease returned again'
           WHEN 'MacReleased' THEN 'released'
           WHEN 'PoolCreated' THEN 'pool created'
           WHEN 'CommandRejected' THEN 'rejected'
           ELSE g.type END AS what,
       g.mac, g.pool, g.namespace, g.vm, g.vm_uid, g.interface,
       g.body ->> 'reason' AS detail,
       g.command_id, g.partition, g."offset", g.generation, g.epoch, g.id
FROM ipam_store.ledger g;
COMMENT ON VIEW ipam.history IS 'The event ledger decoded, oldest first by id: what happened to which address and owner, and when.';
COMMENT ON COLUMN ipam.history.at IS 'When the command was issued.';
COMMENT ON COLUMN ipam.history.what IS 'leased, released, lease returned again, pool created, rejected, or a pipeline note.';
COMMENT ON COLUMN ipam.history.mac IS 'The MAC concerned, if any.';
COMMENT ON COLUMN ipam.history.pool IS 'The pool concerned, if any.';
COMMENT ON COLUMN ipam.history.namespace IS 'Namespace of the VM concerned, if any.';
COMMENT ON COLUMN ipam.history.vm IS 'Name of the VM concerned, if any.';
COMMENT ON COLUMN ipam.history.vm_uid IS 'uid of the VM concerned, if any.';
COMMENT ON COLUMN ipam.history.interface IS 'Interface concerned, if any.';
COMMENT ON COLUMN ipam.history.detail IS 'Why: the rejection reason, the release reason, or the pipeline note.';
COMMENT ON COLUMN ipam.history.command_id IS 'The command this came from (the id a client or the webhook sent).';
COMMENT ON COLUMN ipam.history.partition IS 'Topic partition the event was on.';
COMMENT ON COLUMN ipam.history."offset" IS 'Offset of the event on its partition (within its generation).';
COMMENT ON COLUMN ipam.history.generation IS 'Log generation: bumped when the broker lost the topic and ipam continued from Postgres.';
COMMENT ON COLUMN ipam.history.epoch IS 'Allocator epoch that decided the event.';
COMMENT ON COLUMN ipam.history.id IS 'Ledger row id: order of projection.';
