#!/usr/bin/env bash
# Start the local PostgreSQL and Redis if they are down (the commands of DESIGN.md), then wait
# until both answer. Used by `make up` and by CI.
set -euo pipefail

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; }

if ! pg_up; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start
fi
if ! redis_up; then
  echo "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
for _ in $(seq 1 60); do
  if pg_up && redis_up; then
    echo "PostgreSQL and Redis are up"
    exit 0
  fi
  sleep 0.5
done
pg_up || echo "PostgreSQL is still not reachable on 127.0.0.1:5432" >&2
redis_up || echo "Redis is still not reachable on 127.0.0.1:6379" >&2
exit 1
