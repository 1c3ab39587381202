-- IP address management for VM secondary networks: networks, their subnets, IP leases, quarantine,
-- what running guests report, and the admin's views of them.

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

-- The last guard: an address is held once per network; an interface holds one address per family per network.
CREATE TABLE ipam_store.ip_leases (
    network        text NOT NULL REFERENCES ipam_store.networks (name),
    address        inet NOT NULL,
    family         smallint NOT NULL,
    prefix_length  smallint NOT NULL,
    namespace      text NOT NULL,
    vm             text NOT NULL,
    vm_uid         text NOT NULL,
    interface      text NOT NULL,
    static         boolean NOT NULL,
    since          timestamptz NOT NULL,
    pending_until  timestamptz,
    command_id     text NOT NULL,
    PRIMARY KEY (network, address),
    CONSTRAINT ip_leases_one_per_family UNIQUE (network, namespace, vm, vm_uid, interface, family)
);
CREATE INDEX ip_leases_by_vm ON ipam_store.ip_leases (namespace, vm);
CREATE INDEX ip_leases_pending ON ipam_store.ip_leases (pending_until) WHERE pending_until IS NOT NULL;

CREATE TABLE ipam_store.ip_quarantine (
    network     text NOT NULL,
    address     inet NOT NULL,
    until       timestamptz NOT NULL,
    released_at timestamptz NOT NULL,
    namespace   text NOT NULL,
    vm          text NOT NULL,
    vm_uid      text NOT NULL,
    interface   text NOT NULL,
    PRIMARY KEY (network, address)
);

ALTER TABLE ipam_store.ledger ADD COLUMN network text, ADD COLUMN address inet;
CREATE INDEX ledger_by_address ON ipam_store.ledger (network, address, at) WHERE address IS NOT NULL;

-- What running guests report (VMI status.interfaces[].ipAddresses, from the guest agent): an
-- observation kept by the watcher, replaced on every list, like vmi_interfaces.
CREATE TABLE ipam_store.vmi_addresses (
    vmi_uid    text NOT NULL,
    namespace  text NOT NULL,
    name       text NOT NULL,
    interface  text NOT NULL,
    network    text,                       -- the managed network of that interface, if any
    address    inet NOT NULL,
    seen_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (vmi_uid, interface, address)
);

-- ---- the admin's views ---------------------------------------------------------------

CREATE VIEW ipam.ip_leases AS
SELECT l.network, host(l.address)::inet AS address, l.prefix_length, l.family, l.namespace, l.vm, l.vm_uid, l.interface,
       l.static, l.since,
       CASE WHEN l.pending_until IS NULL THEN 'confirmed' ELSE 'pending' END AS state,
       l.pending_until
FROM ipam_store.ip_leases l;
COMMENT ON VIEW ipam.ip_leases IS 'One row per live IP lease: which interface of which VM holds which address in which network.';
COMMENT ON COLUMN ipam.ip_leases.network IS 'Network the address belongs to.';
COMMENT ON COLUMN ipam.ip_leases.address IS 'The leased address (compare with any spelling: ''10.0.0.5''::inet).';
COMMENT ON COLUMN ipam.ip_leases.prefix_length IS 'Prefix length of its subnet (what the guest configures).';
COMMENT ON COLUMN ipam.ip_leases.family IS '4 or 6.';
COMMENT ON COLUMN ipam.ip_leases.namespace IS 'Namespace of the VirtualMachine.';
COMMENT ON COLUMN ipam.ip_leases.vm IS 'Name of the VirtualMachine.';
COMMENT ON COLUMN ipam.ip_leases.vm_uid IS 'metadata.uid of the VirtualMachine (the address stays with it across reboots and migrations).';
COMMENT ON COLUMN ipam.ip_leases.interface IS 'Interface name in spec.template.spec.domain.devices.interfaces.';
COMMENT ON COLUMN ipam.ip_leases.static IS 'True when the address was asked for explicitly (REST or the VM annotation).';
COMMENT ON COLUMN ipam.ip_leases.since IS 'When the lease was granted.';
COMMENT ON COLUMN ipam.ip_leases.state IS 'confirmed, or pending: leased by the webhook, VM not seen yet.';
COMMENT ON COLUMN ipam.ip_leases.pending_until IS 'For a pending lease: when it is released if no VM holding it has appeared.';

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
COMMENT ON COLUMN ipam.network_usage.network IS 'Network name.';
COMMENT ON COLUMN ipam.network_usage.cidr IS 'The subnet.';
COMMENT ON COLUMN ipam.network_usage.family IS '4 or 6.';
COMMENT ON COLUMN ipam.network_usage.gateway IS 'Gateway address (never handed out), if the network has one.';
COMMENT ON COLUMN ipam.network_usage.size IS 'Addresses that can be handed out: the subnet minus network/broadcast, gateway and exclusions.';
COMMENT ON COLUMN ipam.network_usage.used IS 'Live leases in this subnet.';
COMMENT ON COLUMN ipam.network_usage.quarantined IS 'Released addresses still in quarantine.';
COMMENT ON COLUMN ipam.network_usage.free IS 'Addresses that can be handed out now.';
COMMENT ON COLUMN ipam.network_usage.percent IS 'Percent of the subnet used or quarantined.';
COMMENT ON COLUMN ipam.network_usage.attachments IS 'NetworkAttachmentDefinitions (namespace/name) whose VM interfaces get addresses here.';
COMMENT ON COLUMN ipam.network_usage.source IS 'api (made through REST/CLI) or nad:<namespace>/<name> (discovered by the watcher).';

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
COMMENT ON COLUMN ipam.ip_drift.network IS 'The managed network of the interface.';
COMMENT ON COLUMN ipam.ip_drift.address IS 'The address the guest uses.';
COMMENT ON COLUMN ipam.ip_drift.namespace IS 'Namespace of the VM.';
COMMENT ON COLUMN ipam.ip_drift.vm IS 'Name of the VM (and of its running instance).';
COMMENT ON COLUMN ipam.ip_drift.interface IS 'Interface the guest uses it on.';
COMMENT ON COLUMN ipam.ip_drift.kind IS 'unleased: nobody holds it; held-by-other: another interface holds it (holder_*).';
COMMENT ON COLUMN ipam.ip_drift.holder_namespace IS 'For held-by-other: namespace of the holder.';
COMMENT ON COLUMN ipam.ip_drift.holder_vm IS 'For held-by-other: VM of the holder.';
COMMENT ON COLUMN ipam.ip_drift.holder_interface IS 'For held-by-other: interface of the holder.';
COMMENT ON COLUMN ipam.ip_drift.leased IS 'What this interface does hold in the network (what the guest should use).';
COMMENT ON COLUMN ipam.ip_drift.seen_at IS 'When the watcher last saw it.';

CREATE OR REPLACE VIEW ipam.history AS
SELECT g.at,
       CASE g.type
           WHEN 'MacLeased' THEN CASE WHEN (g.body ->> 'adopted')::boolean THEN 'adopted'
                                      WHEN coalesce((g.body ->> 'pending_until')::bigint, 0) > 0 THEN 'leased (pending)'
                                      ELSE 'leased' END
           WHEN 'IpLeased' THEN CASE WHEN (g.body ->> 'adopted')::boolean THEN 'adopted'
                                     WHEN coalesce((g.body ->> 'pending_until')::bigint, 0) > 0 THEN 'leased (pending)'
                                     ELSE 'leased' END
           WHEN 'MacLeaseReturned' THEN 'lease returned again'
           WHEN 'IpLeaseReturned' THEN 'lease returned again'
           WHEN 'MacReleased' THEN 'released'
           WHEN 'IpReleased' THEN 'released'
           WHEN 'MacLeaseConfirmed' THEN 'confirmed'
           WHEN 'IpLeaseConfirmed' THEN 'confirmed'
           WHEN 'MacLeaseOffered' THEN 'offered (dry run)'
           WHEN 'IpLeaseOffered' THEN 'offered (dry run)'
           WHEN 'MacConflict' THEN 'conflict'
           WHEN 'IpConflict' THEN 'conflict'
           WHEN 'IpDrift' THEN 'drift'
           WHEN 'PoolCreated' THEN 'pool created'
           WHEN 'NetworkDefined' THEN CASE WHEN (g.body ->> 'created')::boolean THEN 'network created' ELSE 'network changed' END
           WHEN 'NetworkDeleted' THEN 'network deleted'
           WHEN 'CommandRejected' THEN 'rejected'
           ELSE g.type END AS what,
       g.mac, g.pool, g.namespace, g.vm, g.vm_uid, g.interface,
       coalesce(g.body ->> 'reason', g.body ->> 'kind') AS detail,
       g.command_id, g.partition, g."offset", g.generation, g.epoch, g.id,
       g.network, host(g.address)::inet AS address
FROM ipam_store.ledger g;
COMMENT ON COLUMN ipam.history.what IS
    'leased, leased (pending), adopted, confirmed, released, lease returned again, offered (dry run), conflict, drift, '
    'pool created, network created/changed/deleted, rejected, or a pipeline note.';
COMMENT ON COLUMN ipam.history.network IS 'The network concerned, if any (IP events).';
COMMENT ON COLUMN ipam.history.address IS 'The IP address concerned, if any.';
COMMENT ON COLUMN ipam.history.detail IS 'Why: the rejection reason, the release reason, the drift kind, or the pipeline note.';
