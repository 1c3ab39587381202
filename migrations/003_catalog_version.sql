-- Read-your-writes for routing: every API replica and the webhook keep the catalogue of pools and
-- networks in memory, and check this one number (bumped in the projection transaction that changes
-- a definition) before each use, so a space that exists for REST exists for every replica at once.

CREATE TABLE ipam_store.catalog_version (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version   bigint NOT NULL
);
INSERT INTO ipam_store.catalog_version (singleton, version) VALUES (true, 1);
