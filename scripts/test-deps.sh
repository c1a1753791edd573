#!/usr/bin/env bash
# The optional tools of `make test`:
# - Debian's chromium, which the dashboard test drives (tests/acceptance/test_dashboard.py);
# - promtool, which lints the monitor's /metrics and deploy/prometheus-alerts.yml
#   (tests/integration/test_promtool.py, test_alert_rules.py). It is copied out of Debian's
#   `prometheus` package into .venv/bin: `apt-get install prometheus` would also install, and
#   try to start, a Prometheus server.
# When one is missing and this runs as root on a machine with apt-get (CI, a fresh machine), it is
# installed; otherwise, or when the install fails, a loud warning says its tests will be skipped.
# Never fails the run: a missing optional tool skips its tests. OUTBOX_TEST_NO_INSTALL=1 installs
# nothing.
# (docker-compose.yml needs no tool: scripts/compose-check.sh validates it without Docker.)
set -uo pipefail

VENV_BIN="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv/bin"

# find_NAME prints where the tool is, or fails.
find_chromium() { command -v chromium || { [[ -x /usr/bin/chromium ]] && echo /usr/bin/chromium; }; }
find_promtool() { command -v promtool || { [[ -x $VENV_BIN/promtool ]] && echo "$VENV_BIN/promtool"; }; }

banner() { # what will be skipped, why, how to get it
  local bar='!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!'
  {
    echo "$bar"
    echo "!! $1 ($2)."
    echo "!! Get it with: $3"
    echo "$bar"
  } >&2
}

warn_chromium() {
  banner "BROWSER TESTS WILL BE SKIPPED: no chromium" "$1" \
    "sudo apt-get install chromium   (Debian/Ubuntu; any Chromium on PATH works)"
}

warn_promtool() {
  banner "PROMTOOL TESTS WILL BE SKIPPED: no promtool" "$1" \
    "sudo scripts/test-deps.sh   (copies promtool from Debian's prometheus package into .venv/bin; any promtool on PATH works)"
}

# Why nothing can be installed here, or nothing when it can.
cannot_install() {
  if [[ ${OUTBOX_TEST_NO_INSTALL:-0} != 0 ]]; then
    echo "OUTBOX_TEST_NO_INSTALL is set, so make test installs nothing"
  elif ((EUID != 0)); then
    echo "make test installs it only when run as root"
  elif ! command -v apt-get >/dev/null 2>&1; then
    echo "no apt-get on this machine to install it with"
  fi
}

updated=0
apt_update() { # once per run, and only when something is to be installed
  ((updated)) || { apt-get update -qq && updated=1; }
}

install_chromium() {
  echo "test-deps: installing Debian's chromium for the browser tests (OUTBOX_TEST_NO_INSTALL=1 skips this)"
  apt_update && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
}

install_promtool() {
  echo "test-deps: copying promtool out of Debian's prometheus package into $VENV_BIN (OUTBOX_TEST_NO_INSTALL=1 skips this)"
  [[ -d $VENV_BIN ]] || { echo "test-deps: no $VENV_BIN: run make setup first" >&2; return 1; }
  local tmp ok=1
  tmp="$(mktemp -d)" || return 1
  # apt drops root to _apt to download; a directory _apt may write to spares its warning.
  chown _apt "$tmp" 2>/dev/null || true
  if apt_update &&
    (cd "$tmp" && apt-get download -qq prometheus) &&
    dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root" &&
    install -m 0755 "$tmp/root/usr/bin/promtool" "$VENV_BIN/promtool" &&
    "$VENV_BIN/promtool" --version >/dev/null; then
    ok=0
  fi
  rm -rf "$tmp"
  return "$ok"
}

# ensure NAME: found, installed, or a loud warning; never a failure.
ensure() {
  local name=$1 where why
  if where="$("find_$name")"; then
    echo "test-deps: $name: $where"
    return
  fi
  why="$(cannot_install)"
  if [[ -n $why ]]; then
    "warn_$name" "$why"
  elif "install_$name" && where="$("find_$name")"; then
    echo "test-deps: $name installed: $where"
  else
    "warn_$name" "installing it failed"
  fi
}

ensure chromium
ensure promtool
exit 0
