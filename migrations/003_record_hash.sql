-- Identity of the last events record consumed on each partition, whatever it was (even an
-- undecodable one): a hash of its exact bytes. Log continuity compares it with the record the
-- broker now holds at that offset.
ALTER TABLE ipam_store.partitions ADD COLUMN last_record_hash bytea;
COMMENT ON COLUMN ipam_store.partitions.last_record_hash IS 'blake2b-128 of the bytes of the record at events_offset - 1.';
