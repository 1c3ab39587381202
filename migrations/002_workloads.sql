-- Pods and IPAMClaims hold leases too (the CNI plugin, the pod webhook, ipam-extensions): each owner
-- says what kind of Kubernetes object it is.  Every lease made before is a VirtualMachine's.

ALTER TABLE ipam_store.mac_leases ADD COLUMN workload text NOT NULL DEFAULT 'VirtualMachine';
ALTER TABLE ipam_store.ip_leases ADD COLUMN workload text NOT NULL DEFAULT 'VirtualMachine';
ALTER TABLE ipam_store.mac_quarantine ADD COLUMN workload text NOT NULL DEFAULT 'VirtualMachine';
ALTER TABLE ipam_store.ip_quarantine ADD COLUMN workload text NOT NULL DEFAULT 'VirtualMachine';
ALTER TABLE ipam_store.ledger ADD COLUMN workload text;
-- An owner is (namespace, name, uid, interface, workload) in the domain: the last guard says the same.
ALTER TABLE ipam_store.mac_leases DROP CONSTRAINT mac_leases_one_per_interface,
    ADD CONSTRAINT mac_leases_one_per_interface UNIQUE (pool, namespace, vm, vm_uid, interface, workload);
ALTER TABLE ipam_store.ip_leases DROP CONSTRAINT ip_leases_one_per_family,
    ADD CONSTRAINT ip_leases_one_per_family UNIQUE (network, namespace, vm, vm_uid, interface, workload, family);
CREATE INDEX mac_leases_by_workload ON ipam_store.mac_leases (workload) WHERE workload <> 'VirtualMachine';
CREATE INDEX ip_leases_by_workload ON ipam_store.ip_leases (workload) WHERE workload <> 'VirtualMachine';

CREATE OR REPLACE VIEW ipam.mac_leases AS
SELECT l.mac, l.pool, l.namespace, l.vm, l.vm_uid, l.interface, l.static, l.since,
       CASE WHEN l.pending_until IS NULL THEN 'confirmed' ELSE 'pending' END AS state,
       l.pending_until, l.workload
FROM ipam_store.mac_leases l;
COMMENT ON COLUMN ipam.mac_leases.workload IS
    'What holds the lease: VirtualMachine, Pod (the pod webhook) or IPAMClaim; vm and vm_uid then name that object.';

CREATE OR REPLACE VIEW ipam.ip_leases AS
SELECT l.network, host(l.address)::inet AS address, l.prefix_length, l.family, l.namespace, l.vm, l.vm_uid, l.interface,
       l.static, l.since,
       CASE WHEN l.pending_until IS NULL THEN 'confirmed' ELSE 'pending' END AS state,
       l.pending_until, l.workload
FROM ipam_store.ip_leases l;
COMMENT ON COLUMN ipam.ip_leases.workload IS
    'What holds the lease: VirtualMachine, Pod (the CNI plugin, interface = CNI_IFNAME) or IPAMClaim; vm and vm_uid then name that object.';

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
                     WHEN 'NetworkDeleted' THEN 'network deleted'
                     WHEN 'CommandRejected' THEN 'rejected'
                     ELSE g.type END
       END AS what,
       g.mac, g.pool, g.namespace, g.vm, g.vm_uid, g.interface,
       coalesce(g.body ->> 'reason', g.body ->> 'kind') AS detail,
       g.command_id, g.partition, g."offset", g.generation, g.epoch, g.id,
       g.network, host(g.address)::inet AS address,
       CASE WHEN g.namespace IS NOT NULL THEN coalesce(g.workload, 'VirtualMachine') END AS workload
FROM ipam_store.ledger g;
COMMENT ON COLUMN ipam.history.workload IS 'What the owner concerned is: VirtualMachine, Pod or IPAMClaim (if any owner).';
