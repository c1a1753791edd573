#!/usr/bin/env bash
# Bring the stack up, migrated and healthy, in the background (the original document's
# `./deploy-redis-streams.sh`), then print the dashboard's URL. Check it with
# ./test-redis-streams.sh; stop it with `./deploy-redis-streams.sh --stop`.
#
# Where a Docker engine answers (`docker info`), with Docker Compose: docker-compose.yml's
# PostgreSQL, Redis (noeviction, AOF), migration, relays, projections and monitor. Otherwise
# (or with --local) on this machine: the local PostgreSQL and Redis (started if down, as
# `make up` does), the virtualenv (`make setup`), `outbox migrate --examples`, then the relay,
# the projections and the monitor as background processes, their PIDs and logs in
# DEPLOY_RUN_DIR (default .run/deploy). Configuration is the usual environment and .env.
#
# Exit codes: 0 up and ready; 1 it did not become ready (the logs say why); 2 bad usage or a
# missing prerequisite.
set -uo pipefail
cd "$(dirname "$0")"

usage() {
  cat <<'EOF'
usage: ./deploy-redis-streams.sh [--local | --compose] [--demo] [--timeout SECONDS]
       ./deploy-redis-streams.sh --status | --stop

  (no option)   Docker Compose when a Docker engine answers, else the local services
  --local       run on this machine (local PostgreSQL and Redis, background processes)
  --compose     use Docker Compose (needs POSTGRES_PASSWORD and REDIS_PASSWORD, env or .env)
  --demo        also run the demo producer (outbox demo, DEMO_RATE events/s, default 50)
  --timeout S   seconds to wait for the monitor's /ready (default: DEPLOY_TIMEOUT_S or 90)
  --status      what runs, and whether the monitor is ready
  --stop        stop what this script started (Compose: docker compose stop)
EOF
}

RUN_DIR=${DEPLOY_RUN_DIR:-.run/deploy}
TIMEOUT_S=${DEPLOY_TIMEOUT_S:-90}
GRACE_S=${DEPLOY_GRACE_S:-30}
OUTBOX=.venv/bin/outbox
PYTHON=.venv/bin/python
mode=auto
action=start
demo=0
while (($#)); do
  case $1 in
    --local) mode=local ;;
    --compose) mode=compose ;;
    --demo) demo=1 ;;
    --timeout)
      shift
      [[ ${1:-} =~ ^[0-9]+$ ]] || { echo "deploy: --timeout needs a number of seconds" >&2; exit 2; }
      TIMEOUT_S=$1
      ;;
    --status) action=status ;;
    --stop) action=stop ;;
    -h | --help) usage; exit 0 ;;
    *) echo "deploy: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
[[ $TIMEOUT_S =~ ^[0-9]+$ ]] || { echo "deploy: DEPLOY_TIMEOUT_S must be a number of seconds" >&2; exit 2; }

components=(relay projections monitor demo)
log() { echo "deploy: $*"; }
alive() { [[ -f $RUN_DIR/$1.pid ]] && kill -0 "$(cat "$RUN_DIR/$1.pid")" 2>/dev/null; }

# The monitor's URL as the monitor itself reads its address (MONITOR_HOST, MONITOR_PORT, .env).
monitor_url() {
  if [[ $(deployed_mode) == compose ]]; then
    echo "http://127.0.0.1:${MONITOR_PORT:-8090}/"
    return
  fi
  "$PYTHON" -c '
from outbox.settings import get_settings, use_env_file
use_env_file(".env")
print(get_settings().monitor_url())'
}

deployed_mode() { cat "$RUN_DIR/mode" 2>/dev/null || echo "$mode"; }

# 0 when GET <url>ready answers 200 (PostgreSQL and Redis reachable from the monitor).
ready() {
  if command -v curl >/dev/null 2>&1; then
    curl -fsS -o /dev/null --max-time 2 "$1ready" 2>/dev/null
  else
    python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "ready", timeout=2)' "$1" 2>/dev/null
  fi
}

compose() {
  docker compose "$@"
}

stop_local() {
  local status=0 name pid deadline
  for name in demo projections relay monitor; do
    alive "$name" || { rm -f "$RUN_DIR/$name.pid"; continue; }
    pid=$(cat "$RUN_DIR/$name.pid")
    kill -TERM "$pid" 2>/dev/null
    deadline=$((SECONDS + GRACE_S))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name (pid $pid) did not stop within ${GRACE_S}s; killing it"
      kill -KILL "$pid" 2>/dev/null
      status=1
    else
      log "stopped $name (pid $pid)"
    fi
    rm -f "$RUN_DIR/$name.pid"
  done
  return "$status"
}

case $action in
  stop)
    if [[ $(deployed_mode) == compose ]]; then
      compose stop && rm -f "$RUN_DIR/mode"
      exit $?
    fi
    stop_local
    status=$?
    rm -f "$RUN_DIR/mode"
    log "stopped (PostgreSQL and Redis keep running; \`make down\` stops a Redis \`make up\` started)"
    exit "$status"
    ;;
  status)
    if [[ $(deployed_mode) == compose ]]; then
      compose ps
    else
      for name in "${components[@]}"; do
        if alive "$name"; then echo "  $name: running (pid $(cat "$RUN_DIR/$name.pid"), log $RUN_DIR/$name.log)"
        else echo "  $name: not running"; fi
      done
    fi
    [[ $(deployed_mode) == compose || -x $PYTHON ]] || { echo "  not set up (no $PYTHON)"; exit 1; }
    url=$(monitor_url)
    if ready "$url"; then echo "  monitor: ready at $url"; exit 0; fi
    echo "  monitor: not ready at $url"
    exit 1
    ;;
esac

# --- start ------------------------------------------------------------------------------------

if [[ $mode == auto ]]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then mode=compose; else mode=local; fi
fi
mkdir -p "$RUN_DIR"

if [[ $mode == compose ]]; then
  if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
    echo "deploy: --compose needs a running Docker engine (docker info failed); --local runs without one" >&2
    exit 2
  fi
  for secret in POSTGRES_PASSWORD REDIS_PASSWORD; do
    if [[ -z ${!secret:-} ]] && ! grep -qs "^$secret=." .env; then
      echo "deploy: set $secret (in the environment or .env) first; there is no default password:" >&2
      echo "  echo \"$secret=\$(openssl rand -hex 24)\" >> .env" >&2
      exit 2
    fi
  done
  services=(postgres redis migrate relay projections monitor)
  ((demo)) && services+=(demo)
  log "docker compose up -d --build ${services[*]}"
  compose up -d --build "${services[@]}" || exit 1
  echo compose >"$RUN_DIR/mode"
  url="http://127.0.0.1:${MONITOR_PORT:-8090}/"
  deadline=$((SECONDS + TIMEOUT_S))
  until ready "$url"; do
    if ((SECONDS >= deadline)); then
      echo "deploy: the monitor was not ready at ${url}ready within ${TIMEOUT_S}s;" \
        "see \`docker compose ps\` and \`docker compose logs migrate monitor\`" >&2
      exit 1
    fi
    sleep 1
  done
else
  if ! command -v make >/dev/null 2>&1; then
    echo "deploy: needs make (apt-get install make) to set up the virtualenv" >&2
    exit 2
  fi
  log "setting up the virtualenv (make setup)"
  make -s setup >"$RUN_DIR/setup.log" 2>&1 || { cat "$RUN_DIR/setup.log" >&2; exit 2; }
  if ! "$OUTBOX" check >"$RUN_DIR/check.log" 2>&1; then
    log "PostgreSQL or Redis is down; starting the local ones (make up)"
    scripts/services-up.sh || exit 2
    "$OUTBOX" check || { echo "deploy: PostgreSQL or Redis is still unreachable (above)" >&2; exit 2; }
  fi
  log "migrating (outbox migrate --examples)"
  "$OUTBOX" migrate --examples 2>"$RUN_DIR/migrate.log" || { cat "$RUN_DIR/migrate.log" >&2; exit 2; }
  echo local >"$RUN_DIR/mode"
  commands=(
    "$OUTBOX relay"
    "env PROJECTION_MODULES=${PROJECTION_MODULES:-outbox.projections.examples} $OUTBOX project"
    "$OUTBOX monitor"
    "$OUTBOX demo --rate ${DEMO_RATE:-50}"
  )
  for i in "${!components[@]}"; do
    name=${components[$i]}
    [[ $name == demo ]] && ((!demo)) && continue
    if alive "$name"; then
      log "$name already runs (pid $(cat "$RUN_DIR/$name.pid"))"
      continue
    fi
    # setsid + nohup: the processes outlive this script and the terminal it ran in.
    setsid nohup ${commands[$i]} >>"$RUN_DIR/$name.log" 2>&1 </dev/null &
    echo $! >"$RUN_DIR/$name.pid"
    log "started $name (pid $!, log $RUN_DIR/$name.log)"
  done
  url=$(monitor_url)
  deadline=$((SECONDS + TIMEOUT_S))
  until ready "$url"; do
    for name in "${components[@]}"; do
      if [[ -f $RUN_DIR/$name.pid ]] && ! alive "$name"; then
        echo "deploy: $name exited; the end of $RUN_DIR/$name.log:" >&2
        tail -n 20 "$RUN_DIR/$name.log" >&2
        stop_local
        exit 1
      fi
    done
    if ((SECONDS >= deadline)); then
      echo "deploy: the monitor was not ready at ${url}ready within ${TIMEOUT_S}s; see $RUN_DIR/monitor.log" >&2
      exit 1
    fi
    sleep 0.2
  done
fi

echo
echo "  ready: the dashboard is at $url"
echo "  check it:  ./test-redis-streams.sh"
echo "  stop it:   ./deploy-redis-streams.sh --stop"
