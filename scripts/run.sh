#!/usr/bin/env bash
# `make run`: check the services, migrate, then run every pipeline component in the foreground
# until Ctrl-C, which stops them all cleanly (SIGTERM, then wait for each to exit).
set -euo pipefail
cd "$(dirname "$0")/.."
OUTBOX=.venv/bin/outbox

if ! "$OUTBOX" check; then
  echo "make run: fix the services above, then run it again." >&2
  exit 2
fi
"$OUTBOX" migrate

# Components, in start order; each runs only if this version of the CLI has it.
components=(
  "relay"
  "project"
  "monitor"
  "demo"
)
pids=()
stop() {
  trap - INT TERM
  echo
  echo "stopping ${#pids[@]} component(s)…"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "stopped"
  exit 0
}
trap stop INT TERM

for component in "${components[@]}"; do
  if "$OUTBOX" "$component" --help >/dev/null 2>&1; then
    "$OUTBOX" $component &
    pids+=($!)
    echo "started outbox $component (pid $!)"
  fi
done

if ((${#pids[@]} == 0)); then
  echo "the database is migrated; no pipeline component is available in this version yet"
  exit 0
fi
echo "dashboard: http://${MONITOR_HOST:-127.0.0.1}:${MONITOR_PORT:-8090}/  (Ctrl-C stops everything)"
wait -n "${pids[@]}" || true
echo "a component exited; stopping the others" >&2
stop
