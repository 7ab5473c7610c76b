#!/usr/bin/env bash
# Writes `.env` beside docker-compose.yml with a new random value for every
# secret the compose file needs, then says what it wrote and how to log in.
#
#   scripts/new-env.sh            # writes <repository>/.env
#   scripts/new-env.sh FILE       # writes FILE instead
#
# It never overwrites: when the file exists it changes nothing and fails.
# Values are letters and digits only, because they go into URLs
# (redis://:<password>@redis..., postgresql://user:<password>@...).
# Other settings (ports, bind addresses, ETL_* ...) can be added to the file
# by hand: see .env.example and docs/containers.md.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ $# -gt 0 ]]; then
    env_file="$1"
else
    env_file="$(cd "$here/.." && pwd)/.env"
fi

if [[ -e "$env_file" ]]; then
    echo "new-env.sh: $env_file exists; nothing changed." >&2
    echo "  To make new secrets, move it away first. Databases keep the passwords they" >&2
    echo "  were created with: apply new ones as docs/containers.md says." >&2
    exit 1
fi

# A random string of letters and digits (about 190 bits for 32 characters).
random_alnum() {
    local length="$1" value=""
    while ((${#value} < length)); do
        value+="$(head -c 256 /dev/urandom | LC_ALL=C tr -dc 'A-Za-z0-9')"
    done
    printf '%s' "${value:0:length}"
}

flower_user="admin"
flower_password="$(random_alnum 32)"

# Readable by its owner only; noclobber makes the write fail rather than
# replace a file that appeared meanwhile.
umask 077
set -o noclobber
cat >"$env_file" <<EOF
# windfarm-etl secrets for docker compose, written by scripts/new-env.sh
# on $(date -u +%Y-%m-%dT%H:%M:%SZ). Keep this file private; it is git-ignored
# and never copied into the image. Letters and digits only: they go into URLs.
# The database passwords take effect when a volume is first created.

# Superuser of both databases (for you, from the host; no app container has it).
POSTGRES_PASSWORD=$(random_alnum 32)
# The read-only role the API reads the source with.
SOURCE_READONLY_PASSWORD=$(random_alnum 32)
# The application role the API and the workers write the target with.
TARGET_APP_PASSWORD=$(random_alnum 32)
# Redis (the broker) requires it; every broker URL carries it.
REDIS_PASSWORD=$(random_alnum 32)
# Flower's login, user:password.
FLOWER_BASIC_AUTH=${flower_user}:${flower_password}
# Uncomment to make POST /jobs ask for 'Authorization: Bearer <API_TOKEN>'
# (do, before opening the API up with API_BIND). Left commented because the
# app's settings read this .env too: \`make run\` and \`make test\` in this
# directory would then ask for it as well.
# API_TOKEN=$(random_alnum 40)

# More settings (API_BIND, FLOWER_BIND, ports, memory limits, ETL_*): see
# .env.example and docs/containers.md.
EOF
set +o noclobber

cat <<EOF
Wrote $env_file (readable by you only) with new random values for:
  POSTGRES_PASSWORD         superuser of both databases
  SOURCE_READONLY_PASSWORD  the API's read-only role on the source
  TARGET_APP_PASSWORD       the application role on the target
  REDIS_PASSWORD            the broker
  FLOWER_BASIC_AUTH         Flower's login
and a commented API_TOKEN: uncomment it to make POST /jobs ask for it.

Next: docker compose up -d

Flower: http://127.0.0.1:5555  user: ${flower_user}  password: ${flower_password}
Jobs:   curl -X POST 127.0.0.1:8000/jobs -H 'content-type: application/json' -d '{"date": "2025-12-05"}'
        (with API_TOKEN set, add -H "Authorization: Bearer <API_TOKEN>")
The API and Flower answer on this machine only (127.0.0.1); docs/containers.md
says how to open them up.
EOF
