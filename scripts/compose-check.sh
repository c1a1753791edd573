#!/usr/bin/env bash
# Validate docker-compose.yml; no Docker engine needed (docs/decisions/0007-compose-validation.md).
# Always: scripts/compose_check.py, which interpolates the file with dummy secrets and validates
# it against the Compose specification's JSON schema (check-jsonschema), and checks that every
# use of POSTGRES_PASSWORD and REDIS_PASSWORD is ${VAR:?…} (there are no default passwords).
# Also, when a Compose tool is installed (`docker compose` v2, or `docker-compose` v1, Debian's
# package): its `config` must render the file with the secrets and refuse to without them.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}

if [[ ! -x $PYTHON ]]; then
  echo "compose-check: $PYTHON not found: run make setup first" >&2
  exit 2
fi
"$PYTHON" scripts/compose_check.py docker-compose.yml

if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
else
  echo "compose-check: no 'docker compose' or 'docker-compose' here: the schema check above is the check"
  exit 0
fi

POSTGRES_PASSWORD=check-only REDIS_PASSWORD=check-only "${compose[@]}" -f docker-compose.yml config --quiet
if env -u POSTGRES_PASSWORD -u REDIS_PASSWORD "${compose[@]}" -f docker-compose.yml config --quiet 2>/dev/null; then
  echo "compose-check: docker-compose.yml renders without POSTGRES_PASSWORD/REDIS_PASSWORD" >&2
  exit 1
fi
echo "compose-check: docker-compose.yml is valid (${compose[*]} config) and needs its secrets"
