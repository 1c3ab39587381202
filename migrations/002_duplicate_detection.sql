-- The last *applied* record of each partition: a record of the same epoch whose sequence is
-- not higher is a duplicate (a producer retry without an idempotent producer) and is dropped.
ALTER TABLE ipam_store.partitions
    ADD COLUMN applied_epoch bigint,
    ADD COLUMN applied_seq   bigint;
COMMENT ON COLUMN ipam_store.partitions.applied_epoch IS 'Epoch of the last event applied (not dropped) on this partition.';
COMMENT ON COLUMN ipam_store.partitions.applied_seq IS 'Sequence of the last event applied on this partition.';
