"""Stamp each pipeline_probe notification as it arrives, in a process of its own.

bench/pipeline.py runs this beside its emitters. Its own event loop is busy with 16 emitting
connections, so a notification could wait there behind many emitter steps before it was
stamped, and that wait would count as pipeline latency. Here nothing else runs: each payload is
written to stdout at once as ``<time.time()> <comma-joined event ids>``, after a first line,
``ready``, that says the LISTEN is in place. The process ends when its stdin closes.

    python -m bench.pipeline_listener DATABASE_URL
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import asyncpg

from bench.pipeline_probe import CHANNEL


async def main(url: str) -> None:
    conn = await asyncpg.connect(url)
    out = sys.stdout

    def on_notify(_: Any, __: int, ___: str, payload: str) -> None:
        out.write(f"{time.time()!r} {payload}\n")
        out.flush()

    await conn.add_listener(CHANNEL, on_notify)
    out.write("ready\n")
    out.flush()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await conn.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
