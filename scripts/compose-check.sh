#!/usr/bin/env bash
# Validate docker-compose.yml without a Docker engine: `docker compose config` (Compose v2) when
# the plugin is installed, else `docker-compose config` (v1, Debian's package). Also checks that
# the file refuses to render without the secrets (there are no default passwords).
set -euo pipefail
cd "$(dirname "$0")/.."

if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
else
  echo "compose-check: neither 'docker compose' nor 'docker-compose' is installed" >&2
  echo "  install one (Debian: apt-get install docker-compose) and run again" >&2
  exit 2
fi

POSTGRES_PASSWORD=check-only REDIS_PASSWORD=check-only "${compose[@]}" -f docker-compose.yml config --quiet
if env -u POSTGRES_PASSWORD -u REDIS_PASSWORD "${compose[@]}" -f docker-compose.yml config --quiet 2>/dev/null; then
  echo "compose-check: docker-compose.yml renders without POSTGRES_PASSWORD/REDIS_PASSWORD" >&2
  exit 1
fi
echo "compose-check: docker-compose.yml is valid (${compose[*]}) and needs its secrets"
