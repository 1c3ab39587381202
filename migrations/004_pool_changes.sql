-- Pools can change: the registry's claim (what no other pool may overlap) is kept apart from the range
-- the pool's own partition hands out from (first_mac..last_mac, always inside the claim), and a pool
-- being deleted is marked retired by its partition before the registry removes it.

ALTER TABLE ipam_store.pools ADD COLUMN claim_lo bigint, ADD COLUMN claim_hi bigint,
    ADD COLUMN retired boolean NOT NULL DEFAULT false;
UPDATE ipam_store.pools SET claim_lo = range_lo, claim_hi = range_hi;
ALTER TABLE ipam_store.pools DROP CONSTRAINT pools_no_overlap,
    ADD CONSTRAINT pools_no_overlap EXCLUDE USING gist (int8range(claim_lo, claim_hi, '[]') WITH &&)
        WHERE (claim_lo IS NOT NULL),
    ADD CONSTRAINT pools_hand_out_what_they_claim CHECK (range_lo IS NULL OR (claim_lo <= range_lo AND range_hi <= claim_hi));
COMMENT ON COLUMN ipam_store.pools.claim_lo IS 'First MAC (as an integer) the registry granted the pool; no two claims overlap.';
COMMENT ON COLUMN ipam_store.pools.retired IS 'True once the pool''s partition hands out nothing more from it (being deleted).';
