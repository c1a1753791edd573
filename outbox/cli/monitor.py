"""``outbox monitor``: serve the monitor (REST, WebSocket, dashboard, Prometheus)."""

from __future__ import annotations

import argparse
from typing import Any


def run(args: argparse.Namespace) -> int:
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    from outbox.cli import eventloop
    from outbox.cli.eventloop import loop_name
    from outbox.cli.heap import freeze_startup_heap
    from outbox.monitor import queries
    from outbox.monitor.app import create_app
    from outbox.preflight import require_current_schema
    from outbox.settings import get_settings
    from outbox.streams.connection import check_redis_mode

    settings = get_settings()
    eventloop.run(
        require_current_schema(
            settings.libpq_url(),
            {"monitor": queries.STATEMENTS},
            schema=settings.outbox_schema,
            sees_every_row=True,
        )
    )
    eventloop.run(check_redis_mode(settings))
    host = args.host or settings.monitor_host
    port = args.port or settings.monitor_port
    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        # LOG_FORMAT=json: uvicorn installs no handlers of its own, so its loggers propagate to
        # the root logger's JSON handler; text keeps uvicorn's own format ("ERROR:    ...").
        log_config=None if settings.log_format == "json" else LOGGING_CONFIG,
        log_level="warning",
        timeout_graceful_shutdown=5,
        loop=loop_name(),
        ws_ping_interval=20,
    )

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # A SIGTERM/SIGINT is the normal way to stop the monitor: shut down gracefully and
            # exit 0, instead of re-raising the signal afterwards as uvicorn does.
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started:  # listening, with the signal handlers in place
                print(f"monitor: http://{host}:{port}/", flush=True)

    server = Server(config)
    freeze_startup_heap()
    server.run()
    return 0 if server.started else 2


def register(sub: argparse._SubParsersAction[Any]) -> None:
    monitor = sub.add_parser(
        "monitor",
        help="serve the monitor dashboard, REST API and Prometheus /metrics",
        description="Serve the monitor. Binds MONITOR_HOST (default 127.0.0.1) and MONITOR_PORT "
        "(default 8090); write actions need MONITOR_ADMIN_TOKEN.",
    )
    monitor.add_argument("--host", help="address to bind (default: MONITOR_HOST)")
    monitor.add_argument("--port", type=int, help="port (default: MONITOR_PORT)")
    monitor.set_defaults(handler=run)
