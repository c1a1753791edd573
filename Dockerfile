# The image every pipeline component runs from: `docker run IMAGE relay|project|monitor|...`.
#
# Stage 1 builds the wheel from the source; stage 2 installs only that wheel, with the exact
# versions of constraints.txt. So the image holds what `pip install 'opsconductor-outbox[all]'`
# gives a user: the dashboard's static files and the migrations come from the wheel's package
# data, never from the checkout. Linted by hadolint (tests/integration/test_image.py, make lint).
#
# The base is an exact patch release (not `3.11` or `latest`), bumped deliberately like
# constraints.txt, so a rebuild gets the same Python and Debian as the tested one.

FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# outbox/ maps the other folders in by relative symlinks (docs/decisions/0012-one-import-root.md);
# COPY keeps them as symlinks and setuptools follows them, so the wheel holds real files.
COPY pyproject.toml README.md LICENSE ./
COPY outbox ./outbox
COPY streams ./streams
COPY relay ./relay
COPY projections ./projections
COPY monitor ./monitor
COPY migrations ./migrations
RUN pip wheel --no-deps --wheel-dir /dist .

FROM python:3.11.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY constraints.txt /tmp/constraints.txt
COPY --from=build /dist /tmp/dist
# psycopg[binary] (pinned by constraints.txt) brings its own libpq, which the slim base lacks.
RUN pip install --constraint /tmp/constraints.txt "$(echo /tmp/dist/*.whl)[all]" "psycopg[binary]" \
    && rm -rf /tmp/dist /tmp/constraints.txt \
    && groupadd --system --gid 10001 outbox \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin outbox
COPY scripts/docker-healthcheck.py /usr/local/bin/outbox-healthcheck
# The commands read a .env of their working directory, if one is mounted here.
WORKDIR /app
# Numeric, so a runtime that enforces runAsNonRoot can see it is not root.
USER 10001:10001
# One check for every command this image runs: `outbox monitor` is healthy when GET /health on
# its port answers; relay, project, demo and migrate have no HTTP port yet and are healthy while
# they run (they exit on a fatal error and the restart policy restarts them). The command is read
# from PID 1's command line, so a monitor that stopped serving fails instead of passing as
# "not a monitor". docker-compose.yml's monitor service overrides it with /ready.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/usr/local/bin/outbox-healthcheck"]
ENTRYPOINT ["outbox"]
CMD ["--help"]
