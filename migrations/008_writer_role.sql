-- ipam_writer: the role the service runs as in production. It reads and writes the tables of
-- ipam_store and reads the views, and can do nothing else: no DDL, no other schema. Migrations run
-- as the owner of the schemas (`ipam migrate`); the service then connects as a login role that is a
-- member of ipam_writer, with IPAM_MIGRATE=false:
--   CREATE ROLE ipam_service LOGIN PASSWORD '...' IN ROLE ipam_writer;
DO $$
BEGIN
    CREATE ROLE ipam_writer NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- another database of this cluster made it first (possibly at the same moment)
END
$$;
GRANT USAGE ON SCHEMA ipam, ipam_store TO ipam_writer;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA ipam_store TO ipam_writer;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA ipam_store TO ipam_writer;
GRANT SELECT ON ALL TABLES IN SCHEMA ipam TO ipam_writer;
GRANT SELECT ON public.ipam_migrations TO ipam_writer;  -- so the service can check the schema is current
-- tables and views added by later migrations (run by the same owner) get the same grants
ALTER DEFAULT PRIVILEGES IN SCHEMA ipam_store GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO ipam_writer;
ALTER DEFAULT PRIVILEGES IN SCHEMA ipam_store GRANT USAGE, SELECT ON SEQUENCES TO ipam_writer;
ALTER DEFAULT PRIVILEGES IN SCHEMA ipam GRANT SELECT ON TABLES TO ipam_writer;
