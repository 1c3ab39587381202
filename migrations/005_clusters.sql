-- Reservations (addresses set aside for a VM that does not exist yet) show as state 'reserved'.
-- One ipam for several Kubernetes clusters: every owner names its cluster (IPAM_CLUSTER of the webhook,
-- watcher and API replicas that made it). Everything made before belongs to cluster 'default'. MACs stay
-- unique across clusters (the primary key is the MAC alone); the one-lease-per-interface guards now
-- tell two clusters' VMs of the same name apart.

ALTER TABLE ipam_store.mac_leases ADD COLUMN cluster text NOT NULL DEFAULT 'default';
ALTER TABLE ipam_store.ip_leases ADD COLUMN cluster text NOT NULL DEFAULT 'default';
ALTER TABLE ipam_store.mac_quarantine ADD COLUMN cluster text NOT NULL DEFAULT 'default';
ALTER TABLE ipam_store.ip_quarantine ADD COLUMN cluster text NOT NULL DEFAULT 'default';
ALTER TABLE ipam_store.ledger ADD COLUMN cluster text;
ALTER TABLE ipam_store.mac_leases DROP CONSTRAINT mac_leases_one_per_interface,
    ADD CONSTRAINT mac_leases_one_per_interface UNIQUE (pool, namespace, vm, vm_uid, interface, workload, cluster);
ALTER TABLE ipam_store.ip_leases DROP CONSTRAINT ip_leases_one_per_family,
    ADD CONSTRAINT ip_leases_one_per_family UNIQUE (network, namespace, vm, vm_uid, interface, workload, family, cluster);

CREATE OR REPLACE VIEW ipam.mac_leases AS
SELECT l.mac, l.pool, l.namespace, l.vm, l.vm_uid, l.interface, l.static, l.since,
       CASE WHEN l.vm_uid LIKE 'admission:reserved:%' THEN 'reserved'
            WHEN l.pending_until IS NULL THEN 'confirmed' ELSE 'pending' END AS state,
       l.pending_until, l.workload, l.cluster
FROM ipam_store.mac_leases l;
COMMENT ON COLUMN ipam.mac_leases.cluster IS 'The Kubernetes cluster of the holder (IPAM_CLUSTER), when one ipam serves several.';

CREATE OR REPLACE VIEW ipam.ip_leases AS
SELECT l.network, host(l.address)::inet AS address, l.prefix_length, l.family, l.namespace, l.vm, l.vm_uid, l.interface,
       l.static, l.since,
       CASE WHEN l.vm_uid LIKE 'admission:reserved:%' THEN 'reserved'
            WHEN l.pending_until IS NULL THEN 'confirmed' ELSE 'pending' END AS state,
       l.pending_until, l.workload, l.cluster
FROM ipam_store.ip_leases l;
COMMENT ON COLUMN ipam.ip_leases.cluster IS 'The Kubernetes cluster of the holder (IPAM_CLUSTER), when one ipam serves several.';

-- history: the owner's cluster, and words for the pool changes of 004
CREATE OR REPLACE VIEW ipam.history AS
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
                     WHEN 'PoolChanged' THEN 'pool changed'
                     WHEN 'PoolRangeSet' THEN 'pool range set'
                     WHEN 'PoolRetired' THEN 'pool retired'
                     WHEN 'PoolDeleted' THEN 'pool deleted'
                     WHEN 'NetworkDeleted' THEN 'network deleted'
                     WHEN 'CommandRejected' THEN 'rejected'
                     ELSE g.type END
       END AS what,
       g.mac, g.pool, g.namespace, g.vm, g.vm_uid, g.interface,
       coalesce(g.body ->> 'reason', g.body ->> 'kind') AS detail,
       g.command_id, g.partition, g."offset", g.generation, g.epoch, g.id,
       g.network, host(g.address)::inet AS address,
       CASE WHEN g.namespace IS NOT NULL THEN coalesce(g.workload, 'VirtualMachine') END AS workload,
       CASE WHEN g.namespace IS NOT NULL THEN coalesce(g.cluster, 'default') END AS cluster
FROM ipam_store.ledger g;
COMMENT ON COLUMN ipam.history.cluster IS 'The Kubernetes cluster of the owner concerned (if any owner).';

CREATE VIEW ipam.reservations AS
SELECT 'mac' AS kind, pool AS space, mac::text AS address, namespace, vm, interface, workload, cluster, since,
       CASE WHEN pending_until < '9999-01-01' THEN pending_until END AS expires
FROM ipam.mac_leases WHERE state = 'reserved'
UNION ALL
SELECT 'ip', network, host(address), namespace, vm, interface, workload, cluster, since,
       CASE WHEN pending_until < '9999-01-01' THEN pending_until END
FROM ipam.ip_leases WHERE state = 'reserved';
COMMENT ON VIEW ipam.reservations IS 'Addresses set aside for a VM that does not exist yet; interface * means any of its interfaces.';
COMMENT ON COLUMN ipam.reservations.kind IS 'mac or ip.';
COMMENT ON COLUMN ipam.reservations.space IS 'The pool (MAC) or network (IP) the address is in.';
COMMENT ON COLUMN ipam.reservations.address IS 'The address set aside (MAC or IP, as text).';
COMMENT ON COLUMN ipam.reservations.namespace IS 'Namespace of the VM it is for.';
COMMENT ON COLUMN ipam.reservations.vm IS 'Name of the VM it is for (which need not exist yet).';
COMMENT ON COLUMN ipam.reservations.interface IS 'The VM interface it is for, or * for whichever of its interfaces asks first.';
COMMENT ON COLUMN ipam.reservations.workload IS 'VirtualMachine, Pod or IPAMClaim: what it is for.';
COMMENT ON COLUMN ipam.reservations.cluster IS 'The Kubernetes cluster of the VM it is for.';
COMMENT ON COLUMN ipam.reservations.since IS 'When it was reserved.';
COMMENT ON COLUMN ipam.reservations.expires IS 'When it lapses (NULL: until released).';
