#!/bin/bash
# Creates the login role the application (API and workers) uses on the target
# database, so that no application process holds the superuser's password.
#
# postgres_target runs this from /docker-entrypoint-initdb.d on its first start
# (empty data volume only). In the target database the role may connect and
# create tables in schema public: the application creates its own tables at
# start (SQLAlchemy create_all) and so owns them, and it takes advisory locks,
# which need no grant. Nothing more: no superuser, no CREATEDB, no CREATEROLE,
# no other schema, and other roles lose their default right to connect here.
# (It may still connect to the `postgres` database, as every role may, where
# the application only checks that the target database exists.)
#
# Environment: POSTGRES_USER and POSTGRES_DB (set by the postgres image),
# TARGET_APP_USER and TARGET_APP_PASSWORD (from docker-compose.yml).
# Safe to run again, and on a database that already holds the tables (a volume
# from before this role existed): it (re)sets the role's password and grants
# and hands the tables in schema public over to the role.
#
#   docker compose exec postgres_target bash /docker-entrypoint-initdb.d/20-app-role.sh
set -eo pipefail

: "${TARGET_APP_PASSWORD:?TARGET_APP_PASSWORD is not set}"

# psql substitutes :'name' (as a literal) and :"name" (as an identifier), so
# odd characters in the name or password cannot break out of the statement.
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v db="$POSTGRES_DB" \
    -v app_user="${TARGET_APP_USER:-windfarm_app}" \
    -v app_password="$TARGET_APP_PASSWORD" <<'SQL'
SELECT format('CREATE ROLE %I', :'app_user')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'app_user') \gexec

ALTER ROLE :"app_user" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT
    NOREPLICATION NOBYPASSRLS PASSWORD :'app_password';

-- By default every role may connect to a new database and create temporary
-- tables in it; here only the application role (and superusers) may connect.
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"db" TO :"app_user";

-- PostgreSQL 15 already denies CREATE on schema public to PUBLIC; say so. The
-- application role creates its tables there, and owns what it creates.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO :"app_user";

-- Tables (with their sequences and indexes) created before the role existed,
-- by the superuser, become the role's: it alters and locks them as an owner.
SELECT format('ALTER TABLE public.%I OWNER TO %I', tablename, :'app_user')
FROM pg_tables
WHERE schemaname = 'public' AND tableowner <> :'app_user' \gexec
SQL
