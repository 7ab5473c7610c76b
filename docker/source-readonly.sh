#!/bin/bash
# Creates the read-only login role the application uses on the source database.
#
# postgres_source runs this from /docker-entrypoint-initdb.d on its first start
# (empty data volume only), after 10-source.sql has created the `data` table.
# In the source database the role may connect and SELECT from `data`, nothing
# else: no writes, no DDL, no temporary tables.
#
# Environment: POSTGRES_USER and POSTGRES_DB (set by the postgres image),
# SOURCE_READONLY_USER and SOURCE_READONLY_PASSWORD (from docker-compose.yml).
# Safe to run again: it only (re)sets the role's password and grants.
set -eo pipefail

# psql substitutes :'name' (as a literal) and :"name" (as an identifier), so
# odd characters in the name or password cannot break out of the statement.
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v db="$POSTGRES_DB" \
    -v ro_user="${SOURCE_READONLY_USER:-windfarm_reader}" \
    -v ro_password="${SOURCE_READONLY_PASSWORD:-reader}" <<'SQL'
SELECT format('CREATE ROLE %I', :'ro_user')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'ro_user') \gexec

ALTER ROLE :"ro_user" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT
    NOREPLICATION PASSWORD :'ro_password';
-- Belt and braces: even a missed grant cannot turn into a write.
ALTER ROLE :"ro_user" SET default_transaction_read_only = on;

-- By default every role may connect to a new database and create temporary
-- tables in it; here only roles named below (and superusers) may connect.
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"db" TO :"ro_user";

-- PostgreSQL 15 already denies CREATE on schema public to PUBLIC; say so.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"ro_user";
GRANT SELECT ON TABLE public.data TO :"ro_user";
SQL
