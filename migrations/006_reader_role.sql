-- ipam_reader: what an admin uses from psql. It can SELECT the documented views in schema ipam
-- and nothing else: no raw tables in ipam_store, no writes. Roles are cluster-wide, so it is
-- created once per Postgres cluster; grant it to people: GRANT ipam_reader TO alice;
DO $$
BEGIN
    CREATE ROLE ipam_reader NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- another database of this cluster made it first (possibly at the same moment)
END
$$;
REVOKE ALL ON SCHEMA ipam_store FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA ipam_store FROM PUBLIC;
GRANT USAGE ON SCHEMA ipam TO ipam_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA ipam TO ipam_reader;
-- views added by later migrations (run by the same role) are readable too
ALTER DEFAULT PRIVILEGES IN SCHEMA ipam GRANT SELECT ON TABLES TO ipam_reader;
