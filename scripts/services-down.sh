#!/usr/bin/env bash
# Stop the local Redis (it keeps nothing on disk). PostgreSQL is a system service: left running.
set -euo pipefail
redis-cli -h 127.0.0.1 -p 6379 shutdown nosave 2>/dev/null || true
