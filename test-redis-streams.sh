#!/usr/bin/env bash
# The operational smoke test of a running deployment (the original document's
# `./test-redis-streams.sh`): Redis reachable, maxmemory-policy noeviction, AOF on; a message
# published, consumed and acknowledged with RedisStreamsClient; one that keeps failing sent to
# the dead letters; a short throughput figure; the monitor's /health, /ready, /api/status,
# /api/streams and /metrics. It writes only under a throwaway key prefix, deleted afterwards.
# One line per check (PASS, WARN, FAIL, SKIP) and a summary; exit code 1 when a check failed.
#
# Options go to `outbox smoke` (`./test-redis-streams.sh --help`): --strict (warnings fail),
# --json, --count N, --timeout S, --monitor-url URL ('' skips the monitor).
# Against a Docker Compose deployment (./deploy-redis-streams.sh --compose) the test runs in a
# container of the stack, where Redis is reachable.
set -uo pipefail
cd "$(dirname "$0")"

if [[ $(cat "${DEPLOY_RUN_DIR:-.run/deploy}/mode" 2>/dev/null) == compose ]]; then
  exec docker compose run --rm --no-deps monitor smoke --monitor-url http://monitor:8090/ "$@"
fi
if [[ ! -x .venv/bin/outbox ]]; then
  echo "test-redis-streams: not set up; run ./deploy-redis-streams.sh (or make setup) first" >&2
  exit 2
fi
exec .venv/bin/outbox smoke "$@"
