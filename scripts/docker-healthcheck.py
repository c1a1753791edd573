#!/usr/bin/env python3
"""The image's HEALTHCHECK (Dockerfile): is the ``outbox`` command this container runs healthy?

- ``outbox monitor``: healthy when ``GET /health`` on its port answers 200 (the port of
  ``--port``, else ``MONITOR_PORT``, else 8090). A monitor that runs but does not serve, for
  example one still waiting for its schema, is unhealthy.
- ``outbox relay`` / ``outbox project`` with a probe port (``--metrics-port``, else
  ``RELAY_METRICS_PORT`` / ``PROJECTION_METRICS_PORT``): healthy when ``GET /health`` there
  answers 200, that is while the daemon's loops keep turning (outbox/probes.py).
- every other command, and those two without a probe port: the check passes while the process
  runs; when it exits the container stops and the restart policy takes over.

The command is read from the process's command line, not guessed from whether a port answers:
a monitor that stopped serving must not pass as a relay.

Usage: ``outbox-healthcheck [PID]`` (default 1, the container's main process). Standard library
only; exit 0 healthy, 1 unhealthy.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

DEFAULT_MONITOR_PORT = 8090
TIMEOUT_S = 3.0
#: Addresses that mean "every interface": the check then asks over loopback.
ANY_ADDRESS = {"", "0.0.0.0", "::", "[::]"}


def outbox_arguments(pid: int) -> list[str] | None:
    """The arguments after ``outbox`` in the command line of ``pid`` (None: not ``outbox``).

    The main process is ``python /usr/local/bin/outbox monitor …``, or with ``init: true``
    ``docker-init -- outbox monitor …``.
    """
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    argv = [part.decode(errors="replace") for part in raw.split(b"\0") if part]
    for index, arg in enumerate(argv):
        if os.path.basename(arg) == "outbox":
            return argv[index + 1 :]
    return None


def option(arguments: list[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` (argparse accepts both)."""
    for index, arg in enumerate(arguments):
        if arg == name and index + 1 < len(arguments):
            return arguments[index + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


#: The environment variable of each daemon's probe port.
PROBE_PORT_VARIABLES = {"relay": "RELAY_METRICS_PORT", "project": "PROJECTION_METRICS_PORT"}


def health_url(host: str, port: object) -> str:
    if host in ANY_ADDRESS:
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}/health"


def monitor_health_url(arguments: list[str]) -> str:
    port = option(arguments, "--port") or os.environ.get("MONITOR_PORT") or DEFAULT_MONITOR_PORT
    host = option(arguments, "--host") or os.environ.get("MONITOR_HOST", "")
    return health_url(host, port)


def daemon_health_url(command: str, arguments: list[str]) -> str | None:
    """The probe port's /health of a relay or projections process, None when it has none."""
    variable = PROBE_PORT_VARIABLES.get(command)
    if variable is None:
        return None
    port = option(arguments, "--metrics-port") or os.environ.get(variable)
    if not port or port == "0":  # none, or a free port nobody can know from outside
        return None
    return health_url(os.environ.get("METRICS_HOST", ""), port)


def main(argv: list[str]) -> int:
    pid = int(argv[1]) if len(argv) > 1 else 1
    try:
        arguments = outbox_arguments(pid)
    except OSError as error:
        print(f"outbox-healthcheck: no process {pid}: {error}", file=sys.stderr)
        return 1
    if arguments is None:
        print(f"outbox-healthcheck: process {pid} is not an outbox command", file=sys.stderr)
        return 1
    command = next((arg for arg in arguments if not arg.startswith("-")), None)
    if command == "monitor":
        url = monitor_health_url(arguments)
    else:
        daemon_url = daemon_health_url(command or "", arguments)
        if daemon_url is None:
            return 0
        url = daemon_url
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            status = response.status
    except OSError as error:
        print(f"outbox-healthcheck: {url}: {error}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"outbox-healthcheck: {url}: HTTP {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
