#!/usr/bin/env bash
# The optional tools of `make test`: Debian's chromium, which the dashboard test drives
# (tests/acceptance/test_dashboard.py). When it is missing and this runs as root on a machine
# with apt-get (CI, a fresh machine), it is installed; otherwise, or when the install fails, a
# loud warning says the browser tests will be skipped. Never fails the run: a missing optional
# tool skips its tests. OUTBOX_TEST_NO_INSTALL=1 installs nothing.
# (docker-compose.yml needs no tool: scripts/compose-check.sh validates it without Docker.)
set -uo pipefail

have_chromium() { command -v chromium >/dev/null 2>&1 || [[ -x /usr/bin/chromium ]]; }

warn() {
  local bar='!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!'
  {
    echo "$bar"
    echo "!! BROWSER TESTS WILL BE SKIPPED: no chromium ($1)."
    echo "!! Get it with: sudo apt-get install chromium   (Debian/Ubuntu; any Chromium on PATH works)"
    echo "$bar"
  } >&2
}

if have_chromium; then
  echo "test-deps: chromium: $(command -v chromium || echo /usr/bin/chromium)"
  exit 0
fi
if [[ ${OUTBOX_TEST_NO_INSTALL:-0} != 0 ]]; then
  warn "OUTBOX_TEST_NO_INSTALL is set, so make test installs nothing"
  exit 0
fi
if ((EUID != 0)); then
  warn "make test installs it only when run as root"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  warn "no apt-get on this machine to install it with"
  exit 0
fi

echo "test-deps: installing Debian's chromium for the browser tests (OUTBOX_TEST_NO_INSTALL=1 skips this)"
export DEBIAN_FRONTEND=noninteractive
if apt-get update -qq && apt-get install -y -qq chromium >/dev/null && have_chromium; then
  echo "test-deps: chromium installed: $(command -v chromium || echo /usr/bin/chromium)"
else
  warn "apt-get install chromium failed"
fi
exit 0
