#!/usr/bin/env bash
# `make run`: check the services, migrate, then run the whole pipeline — relay, projections,
# monitor and the demo producer — until Ctrl-C, which stops them all cleanly: each gets SIGTERM,
# finishes its work in flight and exits; one that has not exited after the grace period is killed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUTBOX=.venv/bin/outbox
PYTHON=.venv/bin/python
GRACE_S=${RUN_GRACE_S:-30}

if ! "$OUTBOX" check; then
  echo "make run: the services above are missing; start them and run it again." >&2
  exit 2
fi
"$OUTBOX" migrate --examples || exit 2

url=$("$PYTHON" -c 'from outbox.settings import get_settings as g, use_env_file as e; e(".env"); s = g(); print(s.monitor_url())')
names=(relay projections monitor demo)
commands=(
  "$OUTBOX relay"
  "env PROJECTION_MODULES=${PROJECTION_MODULES:-outbox.projections.examples} $OUTBOX project"
  "$OUTBOX monitor"
  "$OUTBOX demo --rate ${DEMO_RATE:-50}"
)
pids=()
stopping=0

stop() {
  ((stopping)) && return
  stopping=1
  trap '' INT TERM
  echo "stopping…"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  deadline=$((SECONDS + GRACE_S))
  status=0
  for i in "${!pids[@]}"; do
    pid=${pids[$i]}
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "${names[$i]} did not stop within ${GRACE_S}s; killing it" >&2
      kill -KILL "$pid" 2>/dev/null
      status=1
    fi
    wait "$pid" 2>/dev/null
    code=$?
    if ((code != 0)); then
      echo "${names[$i]} exited with status $code" >&2
      status=1
    fi
  done
  echo "stopped"
  exit "$status"
}
trap stop INT TERM

for i in "${!commands[@]}"; do
  # setsid: Ctrl-C reaches this script only; it stops the components in order.
  setsid ${commands[$i]} &
  pids+=($!)
  echo "started ${names[$i]} (pid $!)"
done

for _ in $(seq 1 100); do
  "$PYTHON" -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1] + 'health', timeout=1)" "$url" 2>/dev/null && break
  sleep 0.1
done
echo
echo "  dashboard: $url   (Ctrl-C stops everything)"
echo

# Wait until Ctrl-C, or until a component exits on its own (then stop the others).
while :; do
  for i in "${!pids[@]}"; do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "${names[$i]} exited; stopping the others" >&2
      stop
    fi
  done
  sleep 0.5 &
  wait $! 2>/dev/null
done
