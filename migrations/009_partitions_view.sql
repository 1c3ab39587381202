-- ipam.partitions: who decides each partition now and how far the projection has got, for
-- `ipam status`, GET /v1/status and admins in psql (ipam_reader and ipam_writer read it by the
-- default privileges of migrations 006 and 008).
CREATE VIEW ipam.partitions AS
SELECT p.partition, p.generation, p.epoch, e.owner, e.claimed_at,
       e.fence_offset IS NOT NULL AS caught_up,
       p.commands_offset AS commands_decided,
       p.events_offset AS events_projected,
       p.updated_at
FROM ipam_store.partitions p
LEFT JOIN ipam_store.epochs e ON e.partition = p.partition AND e.epoch = p.epoch;
COMMENT ON VIEW ipam.partitions IS 'One row per topic partition: the allocator that owns it (its epoch) and how far commands were decided and events projected.';
COMMENT ON COLUMN ipam.partitions.partition IS 'Partition number (the same on the commands and events topics).';
COMMENT ON COLUMN ipam.partitions.generation IS 'Log generation: bumped when the broker lost the topics and ipam continued from Postgres.';
COMMENT ON COLUMN ipam.partitions.epoch IS 'Current allocator epoch: bumped by every takeover; records of older epochs are dropped.';
COMMENT ON COLUMN ipam.partitions.owner IS 'The allocator that claimed the current epoch (<host or pod>/allocator-<id>), or a note when a projector fenced the partition.';
COMMENT ON COLUMN ipam.partitions.claimed_at IS 'When the current epoch was claimed.';
COMMENT ON COLUMN ipam.partitions.caught_up IS 'The owner read the events log to its end and may decide (its fence is recorded).';
COMMENT ON COLUMN ipam.partitions.commands_decided IS 'Next commands-topic offset whose decision is not projected yet.';
COMMENT ON COLUMN ipam.partitions.events_projected IS 'Next events-topic offset to project into Postgres.';
COMMENT ON COLUMN ipam.partitions.updated_at IS 'Last time the projector moved this partition on.';
