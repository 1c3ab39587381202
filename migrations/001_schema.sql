-- replaces: 001_mac_pipeline 002_duplicate_detection 003_record_hash 004_kubevirt 005_vmi_collisions 006_reader_role 007_ip_networks 008_writer_role 009_partitions_view
--
-- The whole schema, as migrations 001-009 left it, written once: tables live in ipam_store (written
-- only by the service); admins read the views in ipam.  A database that applied 001-009 records this
-- file as applied without running it (adapters/postgres/migrations.py); tests/test_migrations.py
-- checks that both roads give the same schema.  Column order follows the old chain, which added
-- columns at the end of tables as it went.

CREATE SCHEMA IF NOT EXISTS ipam_store;
CREATE SCHEMA IF NOT EXISTS ipam;

-- Column comments are written as a table: one line per column, "<column> <comment>" (lines that
-- start with a space continue the comment above).
CREATE FUNCTION ipam_store.comment_columns(relation regclass, doc text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    line text;
    col text;
    comments text[][] := '{}';
BEGIN
    FOREACH line IN ARRAY string_to_array(doc, E'\n') LOOP
        CONTINUE WHEN trim(line) = '';
        IF line LIKE ' %' THEN
            comments[array_length(comments, 1)][2] := comments[array_length(comments, 1)][2] || ' ' || trim(line);
        ELSE
            col := split_part(line, ' ', 1);
            comments := comments || ARRAY[[col, trim(substr(line, length(col) + 1))]];
        END IF;
    END LOOP;
    FOR i IN 1 .. coalesce(array_length(comments, 1), 0) LOOP
        EXECUTE format('COMMENT ON COLUMN %s.%I IS %L', relation, comments[i][1], comments[i][2]);
    END LOOP;
END $$;

-- ---- the pipeline: ownership of partitions, the ledger, answers --------------------------------

CREATE TABLE ipam_store.meta (key text PRIMARY KEY, value text NOT NULL);

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
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- the last *applied* record: a record of the same epoch whose sequence is not higher is a
    -- duplicate (a producer retry without an idempotent producer) and is dropped
    applied_epoch    bigint,
    applied_seq      bigint,
    -- the last record consumed, whatever it was (even undecodable): log continuity compares it
    -- with the record the broker now holds at that offset
    last_record_hash bytea
);
SELECT ipam_store.comment_columns('ipam_store.partitions', $$
applied_epoch Epoch of the last event applied (not dropped) on this partition.
applied_seq Sequence of the last event applied on this partition.
last_record_hash blake2b-128 of the bytes of the record at events_offset - 1.
$$);

-- Each allocator epoch of a partition and the events offset it caught up to before producing.
CREATE TABLE ipam_store.epochs (
    partition integer NOT NULL, epoch bigint NOT NULL, generation integer NOT NULL,
    fence_offset bigint,  -- NULL until the owner finished catching up
    owner text NOT NULL, claimed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (partition, epoch)
);

-- Append-only: every projected event, and notes from the pipeline itself (zombie drops, log resets).
CREATE TABLE ipam_store.ledger (
    id bigserial PRIMARY KEY,
    generation integer NOT NULL, partition integer NOT NULL, "offset" bigint, epoch bigint NOT NULL, seq bigint NOT NULL,
    at timestamptz NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now(),
    type text NOT NULL, command_id text NOT NULL,
    pool text, mac macaddr, namespace text, vm text, vm_uid text, interface text,
    body jsonb NOT NULL,
    network text, address inet
);
CREATE UNIQUE INDEX ledger_position ON ipam_store.ledger (generation, partition, "offset") WHERE "offset" IS NOT NULL;
CREATE INDEX ledger_by_mac ON ipam_store.ledger (mac, at) WHERE mac IS NOT NULL;
CREATE INDEX ledger_by_vm ON ipam_store.ledger (namespace, vm, at) WHERE vm IS NOT NULL;
CREATE INDEX ledger_by_command ON ipam_store.ledger (command_id);
CREATE INDEX ledger_by_address ON ipam_store.ledger (network, address, at) WHERE address IS NOT NULL;

CREATE FUNCTION ipam_store.ledger_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ipam_store.ledger is append-only';
END $$;
CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE ON ipam_store.ledger
    FOR EACH ROW EXECUTE FUNCTION ipam_store.ledger_is_append_only();

-- The answer to each command (and the dedupe store behind retries with the same command id).
CREATE TABLE ipam_store.command_outcomes (
    command_id text PRIMARY KEY, partition integer NOT NULL, events jsonb NOT NULL, complete boolean NOT NULL,
    decided_at timestamptz NOT NULL
);
CREATE INDEX command_outcomes_by_age ON ipam_store.command_outcomes (decided_at);

-- ---- address spaces and their leases --------------------------------------------------------------

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

CREATE TABLE ipam_store.networks (
    name         text PRIMARY KEY,
    definition   jsonb NOT NULL,           -- subnets, dns, attachments as defined (the NetworkDefined event)
    dns          inet[] NOT NULL DEFAULT '{}',
    attachments  text[] NOT NULL DEFAULT '{}',  -- "namespace/name" of NetworkAttachmentDefinitions using it
    source       text NOT NULL,             -- "api" or "nad:<namespace>/<name>"
    partition    integer NOT NULL,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    command_id   text NOT NULL
);
CREATE INDEX networks_by_attachment ON ipam_store.networks USING gin (attachments);

CREATE TABLE ipam_store.network_subnets (
    network     text NOT NULL REFERENCES ipam_store.networks (name) ON DELETE CASCADE,
    idx         integer NOT NULL,          -- position in the definition (allocation order)
    cidr        cidr NOT NULL,
    gateway     inet,
    exclude     text[] NOT NULL DEFAULT '{}',
    size        numeric NOT NULL,          -- addresses that can be handed out (an IPv6 /64 does not fit a bigint)
    cursor      numeric NOT NULL,          -- next-fit cursor (offset from the first usable address)
    PRIMARY KEY (network, idx)
);

-- The last guard, one table per kind of address: a MAC is held once in the cluster and an IP address
-- once per network, and an interface holds one MAC per pool and one address per family per network.
CREATE TABLE ipam_store.mac_leases (
    mac macaddr PRIMARY KEY,
    pool text NOT NULL REFERENCES ipam_store.pools (name),
    namespace text NOT NULL, vm text NOT NULL, vm_uid text NOT NULL, interface text NOT NULL,
    static boolean NOT NULL, since timestamptz NOT NULL, command_id text NOT NULL,
    pending_until timestamptz,  -- set while provisional (made at admission)
    CONSTRAINT mac_leases_one_per_interface UNIQUE (pool, namespace, vm, vm_uid, interface)
);
CREATE INDEX mac_leases_by_vm ON ipam_store.mac_leases (namespace, vm);
CREATE INDEX mac_leases_pending ON ipam_store.mac_leases (pending_until) WHERE pending_until IS NOT NULL;
SELECT ipam_store.comment_columns('ipam_store.mac_leases', $$
pending_until Set while the lease is provisional (made at admission): released then unless a VM is seen holding the MAC.
$$);

CREATE TABLE ipam_store.ip_leases (
    network text NOT NULL REFERENCES ipam_store.networks (name),
    address inet NOT NULL, family smallint NOT NULL, prefix_length smallint NOT NULL,
    namespace text NOT NULL, vm text NOT NULL, vm_uid text NOT NULL, interface text NOT NULL,
    static boolean NOT NULL, since timestamptz NOT NULL, pending_until timestamptz, command_id text NOT NULL,
    PRIMARY KEY (network, address),
    CONSTRAINT ip_leases_one_per_family UNIQUE (network, namespace, vm, vm_uid, interface, family)
);
CREATE INDEX ip_leases_by_vm ON ipam_store.ip_leases (namespace, vm);
CREATE INDEX ip_leases_pending ON ipam_store.ip_leases (pending_until) WHERE pending_until IS NOT NULL;

-- Released addresses, kept from reuse until their quarantine ends (with who held them).
CREATE TABLE ipam_store.mac_quarantine (
    mac macaddr PRIMARY KEY, pool text NOT NULL REFERENCES ipam_store.pools (name),
    until timestamptz NOT NULL, released_at timestamptz NOT NULL,
    namespace text NOT NULL, vm text NOT NULL, vm_uid text NOT NULL, interface text NOT NULL
);
CREATE INDEX mac_quarantine_by_pool ON ipam_store.mac_quarantine (pool, until);

CREATE TABLE ipam_store.ip_quarantine (
    network text NOT NULL, address inet NOT NULL, until timestamptz NOT NULL, released_at timestamptz NOT NULL,
    namespace text NOT NULL, vm text NOT NULL, vm_uid text NOT NULL, interface text NOT NULL,
    PRIMARY KEY (network, address)
);

-- ---- what running VirtualMachineInstances report, kept by the watcher ---------------------------
-- An observation of the cluster, not address state: replaced on every list.

CREATE TABLE ipam_store.vmi_interfaces (
    vmi_uid text NOT NULL, namespace text NOT NULL, name text NOT NULL, interface text NOT NULL,
    mac macaddr NOT NULL, phase text NOT NULL, seen_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (vmi_uid, interface)
);
CREATE INDEX vmi_interfaces_by_mac ON ipam_store.vmi_interfaces (mac) WHERE phase = 'Running';

-- The guest agent's addresses (VMI status.interfaces[].ipAddresses).
CREATE TABLE ipam_store.vmi_addresses (
    vmi_uid text NOT NULL, namespace text NOT NULL, name text NOT NULL, interface text NOT NULL,
    network text,  -- the managed network of that interface, if any
    address inet NOT NULL, seen_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (vmi_uid, interface, address)
);

-- ---- who may do what --------------------------------------------------------------------------------
-- ipam_reader: what an admin uses from psql: the documented views in schema ipam and nothing else.
-- ipam_writer: the role the service runs as in production (IPAM_MIGRATE=false): it reads and writes
-- the tables of ipam_store and reads the views, no DDL.  Migrations run as the owner of the schemas:
--   CREATE ROLE ipam_service LOGIN PASSWORD '...' IN ROLE ipam_writer;  GRANT ipam_reader TO alice;
-- Roles are cluster-wide: another database of this cluster may have made them first (at the same moment).
DO $$
BEGIN
    CREATE ROLE ipam_reader NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;
DO $$
BEGIN
    CREATE ROLE ipam_writer NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;
REVOKE ALL ON SCHEMA ipam_store FROM PUBLIC;
GRANT USAGE ON SCHEMA ipam TO ipam_reader;
GRANT USAGE ON SCHEMA ipam, ipam_store TO ipam_writer;
GRANT SELECT ON public.ipam_migrations TO ipam_writer;  -- so the service can check the schema is current
-- tables and views made from here on (by the same owner) get their grants
ALTER DEFAULT PRIVILEGES IN SCHEMA ipam GRANT SELECT ON TABLES TO ipam_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA ipam GRANT SELECT ON TABLES TO ipam_writer;
ALTER DEFAULT PRIVILEGES IN SCHEMA ipam_store GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO ipam_writer;
ALTER DEFAULT PRIVILEGES IN SCHEMA ipam_store GRANT USAGE, SELECT ON SEQUENCES TO ipam_writer;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA ipam_store TO ipam_writer;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA ipam_store TO ipam_writer;

-- ---- the admin's views -----------------------------------------------------------------------------

CREATE VIEW ipam.mac_leases AS
SELECT l.mac, l.pool, l.namespace, l.vm, l.vm_uid, l.interface, l.static, l.since,
       CASE WHEN l.pending_until IS NULL THEN 'confirmed' ELSE 'pending' END AS state,
       l.pending_until
FROM ipam_store.mac_leases l;
COMMENT ON VIEW ipam.mac_leases IS 'One row per live MAC lease: which interface of which VM holds which MAC.';
SELECT ipam_store.comment_columns('ipam.mac_leases', $$mac The leased MAC address (compare with any MAC spelling: '02-00-00-00-00-01' works).
pool Pool the MAC was leased from.
namespace Namespace of the VirtualMachine.
vm Name of the VirtualMachine.
vm_uid metadata.uid of the VirtualMachine (one incarnation of that name).
interface Interface name in spec.template.spec.domain.devices.interfaces.
static True when the MAC was asked for explicitly rather than picked by ipam.
since When the lease was granted.
state confirmed: a VM was seen holding the MAC (or it was leased through REST); pending: leased by the webhook, VM not
    seen yet.
pending_until For a pending lease: when it is released if no VM holding it has appeared.
$$);

CREATE VIEW ipam.ip_leases AS
SELECT l.network, host(l.address)::inet AS address, l.prefix_length, l.family, l.namespace, l.vm, l.vm_uid, l.interface,
       l.static, l.since,
       CASE WHEN l.pending_until IS NULL THEN 'confirmed' ELSE 'pending' END AS state,
       l.pending_until
FROM ipam_store.ip_leases l;
COMMENT ON VIEW ipam.ip_leases IS 'One row per live IP lease: which interface of which VM holds which address in which network.';
SELECT ipam_store.comment_columns('ipam.ip_leases', $$network Network the address belongs to.
address The leased address (compare with any spelling: '10.0.0.5'::inet).
prefix_length Prefix length of its subnet (what the guest configures).
family 4 or 6.
namespace Namespace of the VirtualMachine.
vm Name of the VirtualMachine.
vm_uid metadata.uid of the VirtualMachine (the address stays with it across reboots and migrations).
interface Interface name in spec.template.spec.domain.devices.interfaces.
static True when the address was asked for explicitly (REST or the VM annotation).
since When the lease was granted.
state confirmed, or pending: leased by the webhook, VM not seen yet.
pending_until For a pending lease: when it is released if no VM holding it has appeared.
$$);

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
SELECT ipam_store.comment_columns('ipam.pool_usage', $$pool Pool name.
range first-last MAC of the pool, or 'external' for the pool of MACs outside every range.
size Unicast addresses in the range (multicast addresses are never handed out).
used Live leases.
quarantined Released addresses still in quarantine (not handed out again yet).
free Addresses that can be handed out now.
percent Percent of the pool that is used or quarantined.
namespaces Namespaces bound to this pool (their requests without a pool use it).
is_default True for the pool used by requests whose namespace is bound to no pool.
created_at When the pool was created.
$$);

CREATE VIEW ipam.network_usage AS
SELECT s.network, s.cidr, family(s.cidr) AS family, s.gateway, s.size,
       coalesce(l.used, 0) AS used,
       coalesce(q.quarantined, 0) AS quarantined,
       s.size - coalesce(l.used, 0) - coalesce(q.quarantined, 0) AS free,
       round(100.0 * (coalesce(l.used, 0) + coalesce(q.quarantined, 0)) / s.size, 4) AS percent,
       n.attachments, n.source
FROM ipam_store.network_subnets s
JOIN ipam_store.networks n ON n.name = s.network
LEFT JOIN LATERAL (SELECT count(*) AS used FROM ipam_store.ip_leases l
                   WHERE l.network = s.network AND l.address << s.cidr) l ON true
LEFT JOIN LATERAL (SELECT count(*) AS quarantined FROM ipam_store.ip_quarantine q
                   WHERE q.network = s.network AND q.address << s.cidr AND q.until > now()) q ON true;
COMMENT ON VIEW ipam.network_usage IS 'One row per subnet of each network: how big it is and how much of it is taken.';
SELECT ipam_store.comment_columns('ipam.network_usage', $$network Network name.
cidr The subnet.
family 4 or 6.
gateway Gateway address (never handed out), if the network has one.
size Addresses that can be handed out: the subnet minus network/broadcast, gateway and exclusions.
used Live leases in this subnet.
quarantined Released addresses still in quarantine.
free Addresses that can be handed out now.
percent Percent of the subnet used or quarantined.
attachments NetworkAttachmentDefinitions (namespace/name) whose VM interfaces get addresses here.
source api (made through REST/CLI) or nad:<namespace>/<name> (discovered by the watcher).
$$);

-- What happened, event by event: every kind's events in one list, in people's words.
CREATE VIEW ipam.history AS
SELECT g.at,
       CASE WHEN g.type IN ('MacLeased', 'IpLeased') THEN
                 CASE WHEN (g.body ->> 'adopted')::boolean THEN 'adopted'
                      WHEN coalesce((g.body ->> 'pending_until')::bigint, 0) > 0 THEN 'leased (pending)'
                      ELSE 'leased' END
            WHEN g.type = 'NetworkDefined' THEN
                 CASE WHEN (g.body ->> 'created')::boolean THEN 'network created' ELSE 'network changed' END
            ELSE CASE regexp_replace(g.type, '^(Mac|Ip)(?=Lease|Released|Conflict|Drift)', '')
                     WHEN 'LeaseReturned' THEN 'lease returned again'
                     WHEN 'Released' THEN 'released'
                     WHEN 'LeaseConfirmed' THEN 'confirmed'
                     WHEN 'LeaseOffered' THEN 'offered (dry run)'
                     WHEN 'Conflict' THEN 'conflict'
                     WHEN 'Drift' THEN 'drift'
                     WHEN 'PoolCreated' THEN 'pool created'
                     WHEN 'NetworkDeleted' THEN 'network deleted'
                     WHEN 'CommandRejected' THEN 'rejected'
                     ELSE g.type END
       END AS what,
       g.mac, g.pool, g.namespace, g.vm, g.vm_uid, g.interface,
       coalesce(g.body ->> 'reason', g.body ->> 'kind') AS detail,
       g.command_id, g.partition, g."offset", g.generation, g.epoch, g.id,
       g.network, host(g.address)::inet AS address
FROM ipam_store.ledger g;
COMMENT ON VIEW ipam.history IS 'The event ledger decoded, oldest first by id: what happened to which address and owner, and when.';
SELECT ipam_store.comment_columns('ipam.history', $$at When the command was issued.
what leased, leased (pending), adopted, confirmed, released, lease returned again, offered (dry run), conflict, drift,
    pool created, network created/changed/deleted, rejected, or a pipeline note.
mac The MAC concerned, if any.
pool The pool concerned, if any.
namespace Namespace of the VM concerned, if any.
vm Name of the VM concerned, if any.
vm_uid uid of the VM concerned, if any.
interface Interface concerned, if any.
detail Why: the rejection reason, the release reason, the drift kind, or the pipeline note.
command_id The command this came from (the id a client or the webhook sent).
partition Topic partition the event was on.
offset Offset of the event on its partition (within its generation).
generation Log generation: bumped when the broker lost the topic and ipam continued from Postgres.
epoch Allocator epoch that decided the event.
id Ledger row id: order of projection.
network The network concerned, if any (IP events).
address The IP address concerned, if any.
$$);

CREATE VIEW ipam.mac_conflicts AS
SELECT DISTINCT ON (c.mac, c.namespace, c.vm, c.vm_uid, c.interface)
       c.mac, c.pool,
       c.namespace, c.vm, c.vm_uid, c.interface,
       c.body -> 'holder' ->> 'namespace' AS holder_namespace,
       c.body -> 'holder' ->> 'vm' AS holder_vm,
       c.body -> 'holder' ->> 'interface' AS holder_interface,
       c.at AS seen_at
FROM ipam_store.ledger c
JOIN ipam_store.mac_leases l
  ON l.mac = c.mac AND l.namespace = c.body -> 'holder' ->> 'namespace' AND l.vm = c.body -> 'holder' ->> 'vm'
     AND l.vm_uid = c.body -> 'holder' ->> 'vm_uid' AND l.interface = c.body -> 'holder' ->> 'interface'
WHERE c.type = 'MacConflict' AND c."offset" IS NOT NULL
ORDER BY c.mac, c.namespace, c.vm, c.vm_uid, c.interface, c.id DESC;
COMMENT ON VIEW ipam.mac_conflicts IS
    'VMs whose spec carries a MAC that another interface holds (found by the watcher, e.g. duplicates left by KubeMacPool), while that holder still holds it.';
SELECT ipam_store.comment_columns('ipam.mac_conflicts', $$mac The MAC both claim.
pool Pool of the MAC.
namespace Namespace of the VM that carries the MAC without holding it.
vm Name of the VM that carries the MAC without holding it.
vm_uid uid of that VM.
interface Its interface carrying the MAC.
holder_namespace Namespace of the VM holding the lease.
holder_vm Name of the VM holding the lease.
holder_interface Interface holding the lease.
seen_at When the watcher last reported the conflict.
$$);

CREATE VIEW ipam.mac_collisions AS
SELECT v.mac,
       count(DISTINCT v.vmi_uid) AS vmis,
       array_agg(v.namespace || '/' || v.name || ' ' || v.interface ORDER BY v.namespace, v.name, v.interface) AS interfaces,
       max(v.seen_at) AS seen_at
FROM ipam_store.vmi_interfaces v
WHERE v.phase = 'Running'
GROUP BY v.mac
HAVING count(DISTINCT v.vmi_uid) > 1;
COMMENT ON VIEW ipam.mac_collisions IS
    'MACs that more than one running VirtualMachineInstance uses right now (from the VMIs'' status): a live collision on the wire.';
SELECT ipam_store.comment_columns('ipam.mac_collisions', $$mac The MAC in use by several running VMIs.
vmis How many running VMIs use it.
interfaces namespace/name interface of each.
seen_at When the watcher last saw one of them.
$$);

CREATE VIEW ipam.ip_drift AS
SELECT v.network, host(v.address)::inet AS address, v.namespace, v.name AS vm, v.interface,
       CASE WHEN l.address IS NULL THEN 'unleased' ELSE 'held-by-other' END AS kind,
       l.namespace AS holder_namespace, l.vm AS holder_vm, l.interface AS holder_interface,
       (SELECT array_agg(host(m.address) ORDER BY m.address) FROM ipam_store.ip_leases m
        WHERE m.network = v.network AND m.namespace = v.namespace AND m.vm = v.name AND m.interface = v.interface) AS leased,
       v.seen_at
FROM ipam_store.vmi_addresses v
JOIN ipam_store.network_subnets s ON s.network = v.network AND v.address << s.cidr
LEFT JOIN ipam_store.ip_leases l ON l.network = v.network AND l.address = host(v.address)::inet
WHERE v.network IS NOT NULL
  AND NOT (l.address IS NOT NULL AND l.namespace = v.namespace AND l.vm = v.name AND l.interface = v.interface);
COMMENT ON VIEW ipam.ip_drift IS
    'Running guests using an address of a managed network that is not their lease (from the VMIs'' status, reported by the guest agent).';
SELECT ipam_store.comment_columns('ipam.ip_drift', $$network The managed network of the interface.
address The address the guest uses.
namespace Namespace of the VM.
vm Name of the VM (and of its running instance).
interface Interface the guest uses it on.
kind unleased: nobody holds it; held-by-other: another interface holds it (holder_*).
holder_namespace For held-by-other: namespace of the holder.
holder_vm For held-by-other: VM of the holder.
holder_interface For held-by-other: interface of the holder.
leased What this interface does hold in the network (what the guest should use).
seen_at When the watcher last saw it.
$$);

-- Who decides each partition now and how far the projection has got (`ipam status`, GET /v1/status).
CREATE VIEW ipam.partitions AS
SELECT p.partition, p.generation, p.epoch, e.owner, e.claimed_at,
       e.fence_offset IS NOT NULL AS caught_up,
       p.commands_offset AS commands_decided,
       p.events_offset AS events_projected,
       p.updated_at
FROM ipam_store.partitions p
LEFT JOIN ipam_store.epochs e ON e.partition = p.partition AND e.epoch = p.epoch;
COMMENT ON VIEW ipam.partitions IS
    'One row per topic partition: the allocator that owns it (its epoch) and how far commands were decided and events projected.';
SELECT ipam_store.comment_columns('ipam.partitions', $$partition Partition number (the same on the commands and events topics).
generation Log generation: bumped when the broker lost the topics and ipam continued from Postgres.
epoch Current allocator epoch: bumped by every takeover; records of older epochs are dropped.
owner The allocator that claimed the current epoch (<host or pod>/allocator-<id>), or a note when a projector fenced
    the partition.
claimed_at When the current epoch was claimed.
caught_up The owner read the events log to its end and may decide (its fence is recorded).
commands_decided Next commands-topic offset whose decision is not projected yet.
events_projected Next events-topic offset to project into Postgres.
updated_at Last time the projector moved this partition on.
$$);

DROP FUNCTION ipam_store.comment_columns(regclass, text);  -- a tool of this file, not part of the schema
