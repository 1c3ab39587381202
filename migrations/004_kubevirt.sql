-- KubeVirt integration: provisional leases made by the admission webhook, and the admin's
-- views of them and of conflicts the watcher found.

ALTER TABLE ipam_store.mac_leases ADD COLUMN pending_until timestamptz;
COMMENT ON COLUMN ipam_store.mac_leases.pending_until IS
    'Set while the lease is provisional (made at admission): released then unless a VM is seen holding the MAC.';
CREATE INDEX mac_leases_pending ON ipam_store.mac_leases (pending_until) WHERE pending_until IS NOT NULL;

CREATE OR REPLACE VIEW ipam.mac_leases AS
SELECT l.mac, l.pool, l.namespace, l.vm, l.vm_uid, l.interface, l.static, l.since,
       CASE WHEN l.pending_until IS NULL THEN 'confirmed' ELSE 'pending' END AS state,
       l.pending_until
FROM ipam_store.mac_leases l;
COMMENT ON COLUMN ipam.mac_leases.state IS
    'confirmed: a VM was seen holding the MAC (or it was leased through REST); pending: leased by the webhook, VM not seen yet.';
COMMENT ON COLUMN ipam.mac_leases.pending_until IS 'For a pending lease: when it is released if no VM holding it has appeared.';

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
COMMENT ON COLUMN ipam.mac_conflicts.mac IS 'The MAC both claim.';
COMMENT ON COLUMN ipam.mac_conflicts.pool IS 'Pool of the MAC.';
COMMENT ON COLUMN ipam.mac_conflicts.namespace IS 'Namespace of the VM that carries the MAC without holding it.';
COMMENT ON COLUMN ipam.mac_conflicts.vm IS 'Name of the VM that carries the MAC without holding it.';
COMMENT ON COLUMN ipam.mac_conflicts.vm_uid IS 'uid of that VM.';
COMMENT ON COLUMN ipam.mac_conflicts.interface IS 'Its interface carrying the MAC.';
COMMENT ON COLUMN ipam.mac_conflicts.holder_namespace IS 'Namespace of the VM holding the lease.';
COMMENT ON COLUMN ipam.mac_conflicts.holder_vm IS 'Name of the VM holding the lease.';
COMMENT ON COLUMN ipam.mac_conflicts.holder_interface IS 'Interface holding the lease.';
COMMENT ON COLUMN ipam.mac_conflicts.seen_at IS 'When the watcher last reported the conflict.';

CREATE OR REPLACE VIEW ipam.history AS
SELECT g.at,
       CASE g.type
           WHEN 'MacLeased' THEN CASE WHEN (g.body ->> 'adopted')::boolean THEN 'adopted'
                                      WHEN coalesce((g.body ->> 'pending_until')::bigint, 0) > 0 THEN 'leased (pending)'
                                      ELSE 'leased' END
           WHEN 'MacLeaseReturned' THEN 'lease returned again'
           WHEN 'MacReleased' THEN 'released'
           WHEN 'MacLeaseConfirmed' THEN 'confirmed'
           WHEN 'MacLeaseOffered' THEN 'offered (dry run)'
           WHEN 'MacConflict' THEN 'conflict'
           WHEN 'PoolCreated' THEN 'pool created'
           WHEN 'CommandRejected' THEN 'rejected'
           ELSE g.type END AS what,
       g.mac, g.pool, g.namespace, g.vm, g.vm_uid, g.interface,
       g.body ->> 'reason' AS detail,
       g.command_id, g.partition, g."offset", g.generation, g.epoch, g.id
FROM ipam_store.ledger g;
COMMENT ON COLUMN ipam.history.what IS
    'leased, leased (pending), adopted, confirmed, released, lease returned again, offered (dry run), conflict, pool created, rejected, or a pipeline note.';
