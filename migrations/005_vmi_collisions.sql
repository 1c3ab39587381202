-- What running VirtualMachineInstances report, kept by the watcher (an observation of the cluster,
-- not address state: it is replaced on every list), and the collisions it shows.

CREATE TABLE ipam_store.vmi_interfaces (
    vmi_uid    text NOT NULL,
    namespace  text NOT NULL,
    name       text NOT NULL,
    interface  text NOT NULL,
    mac        macaddr NOT NULL,
    phase      text NOT NULL,
    seen_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (vmi_uid, interface)
);
CREATE INDEX vmi_interfaces_by_mac ON ipam_store.vmi_interfaces (mac) WHERE phase = 'Running';

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
COMMENT ON COLUMN ipam.mac_collisions.mac IS 'The MAC in use by several running VMIs.';
COMMENT ON COLUMN ipam.mac_collisions.vmis IS 'How many running VMIs use it.';
COMMENT ON COLUMN ipam.mac_collisions.interfaces IS 'namespace/name interface of each.';
COMMENT ON COLUMN ipam.mac_collisions.seen_at IS 'When the watcher last saw one of them.';
