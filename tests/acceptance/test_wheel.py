"""The built wheel, installed the way a user installs it: into fresh virtualenvs that cannot see
this checkout (they are created without it on ``sys.path`` and run from a temporary folder).

- The wheel holds one import root, ``outbox``, with every file of the package folders, among
  them the dashboard's static files and the migrations (package data).
- Installed alone it adds exactly ``outbox`` and its dist-info to site-packages.
- The base install brings pydantic and pydantic-settings only: none of the daemons' drivers, and
  a daemon command run without its extra says which extra to install.
- With ``[monitor,migrate]`` it migrates the test's own database and serves the dashboard, whose
  page and static assets are the repository's files. The image's health check passes on it.

The wheel is built once per module from a copy of the files the Dockerfile's build stage gets,
so nothing is written to the checkout and no stale ``build/`` folder of it can leak in.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

import pytest
import redis

from outbox._version import __version__
from outbox.settings import Settings
from tests.fixtures_monitor import free_port

# The first test of a fixture pays for its build or install (downloads on a fresh machine).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
#: What the Dockerfile's build stage copies: enough for setuptools to build the wheel.
BUILD_CONTEXT = ("pyproject.toml", "README.md", "LICENSE", "outbox")
MAPPED = ("streams", "relay", "projections", "monitor", "migrations")
DIST_INFO = f"opsconductor_outbox-{__version__}.dist-info"
#: Files of the package folders that belong in the wheel.
PACKAGE_SUFFIXES = {".py", ".pyi", ".typed", ".mako", ".sql", ".html", ".js", ".css"}
#: The daemons' dependencies: the base install must bring none of them.
DAEMON_DEPENDENCIES = {
    "asyncpg",
    "redis",
    "hiredis",
    "fastapi",
    "starlette",
    "uvicorn",
    "uvloop",
    "alembic",
    "sqlalchemy",
    "psycopg",
    "psycopg-binary",
    "prometheus-client",
}
#: Variables that would let a fresh venv see this checkout or another environment.
LEAKY_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PIP_PYTHON")
STATIC = ROOT / "monitor" / "static"


def clean_env(bin_dir: Path | None = None, **variables: str) -> dict[str, str]:
    """The environment minus anything pointing into this checkout or its .venv."""
    env = {key: value for key, value in os.environ.items() if key not in LEAKY_VARIABLES}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and str(ROOT) not in p]
    env["PATH"] = os.pathsep.join([str(bin_dir), *path] if bin_dir else path)
    env["PYTHONNOUSERSITE"] = "1"
    env.update(variables)
    return env


def run(
    args: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=env or clean_env(), capture_output=True, text=True, timeout=timeout
    )


@dataclass
class Venv:
    root: Path

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def site_packages(self) -> Path:
        (path,) = (self.root / "lib").glob("python3*/site-packages")
        return path

    def env(self, **variables: str) -> dict[str, str]:
        return clean_env(self.bin, **variables)

    def install(self, *requirements: str) -> None:
        """pip (this .venv's, pointed at the venv with ``--python``) installs into the venv."""
        result = run(
            [
                sys.executable,
                "-m",
                "pip",
                "--python",
                str(self.bin / "python"),
                "install",
                "--quiet",
                "--constraint",
                str(ROOT / "constraints.txt"),
                *requirements,
            ],
            cwd=self.root,
            timeout=600,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def run(
        self, *args: str, timeout: float = 120, **variables: str
    ) -> subprocess.CompletedProcess[str]:
        return run(list(args), cwd=self.root, timeout=timeout, env=self.env(**variables))

    def distributions(self) -> set[str]:
        result = self.run(
            "python",
            "-c",
            "import importlib.metadata as m; print('\\n'.join(d.metadata['Name'] for d in"
            " m.distributions()))",
        )
        assert result.returncode == 0, result.stderr
        return {re.sub(r"[-_.]+", "-", name).lower() for name in result.stdout.split()}


def new_venv(path: Path) -> Venv:
    """A venv of the base interpreter, without pip (installs go through ``pip --python``), so
    its site-packages starts empty."""
    result = run([sys.executable, "-m", "venv", "--without-pip", str(path)], path.parent, 120)
    assert result.returncode == 0, result.stderr
    return Venv(path)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in (*BUILD_CONTEXT, *MAPPED):
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(path, source / name)
    dist = tmp_path_factory.mktemp("dist")
    result = run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(dist), str(source)],
        cwd=dist,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = dist.glob("*.whl")
    return built


def package_files() -> set[str]:
    """Every file the wheel must hold, as ``outbox/…`` (following the symlinks in outbox/)."""
    files = set()
    for directory, folders, names in os.walk(ROOT / "outbox", followlinks=True):
        folders[:] = [folder for folder in folders if folder != "__pycache__"]
        for name in names:
            path = Path(directory, name)
            if path.suffix in PACKAGE_SUFFIXES:
                files.add(str(path.relative_to(ROOT)))
    return files


def test_wheel_has_one_import_root_with_every_package_file(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        record = archive.read(f"{DIST_INFO}/RECORD").decode()
        metadata = Parser().parsestr(archive.read(f"{DIST_INFO}/METADATA").decode())
        static = {
            path.name: archive.read(f"outbox/monitor/static/{path.name}")
            for path in STATIC.iterdir()
        }
    assert {name.split("/")[0] for name in names} == {"outbox", DIST_INFO}
    assert {row[0] for row in csv.reader(io.StringIO(record)) if row} == set(names)
    required = {
        "outbox/py.typed",
        "outbox/monitor/static/index.html",
        "outbox/monitor/static/app.js",
        "outbox/monitor/static/style.css",
        "outbox/migrations/script.py.mako",
        *(
            f"outbox/migrations/versions/{p.name}"
            for p in (ROOT / "migrations/versions").glob("*.py")
        ),
    }
    missing = (required | package_files()) - set(names)
    assert not missing, f"not in the wheel: {sorted(missing)}"
    for name in (*MAPPED, "cli"):
        assert not any(n.startswith(f"{name}/") for n in names), name
    assert static == {path.name: path.read_bytes() for path in STATIC.iterdir()}
    base = {
        re.split(r"[ ;<>=!~\[]", requirement, maxsplit=1)[0].lower()
        for requirement in metadata.get_all("Requires-Dist") or []
        if "extra ==" not in requirement
    }
    assert base == {"pydantic", "pydantic-settings"}


@pytest.fixture(scope="module")
def bare_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[set[str], set[str]]:
    """What ``pip install --no-deps WHEEL`` added to site-packages and to bin/."""
    venv = new_venv(tmp_path_factory.mktemp("bare") / "venv")
    site_before, bin_before = set(os.listdir(venv.site_packages)), set(os.listdir(venv.bin))
    venv.install("--no-deps", str(wheel))
    site_after, bin_after = set(os.listdir(venv.site_packages)), set(os.listdir(venv.bin))
    assert site_before <= site_after
    assert bin_before <= bin_after
    return site_after - site_before, bin_after - bin_before


def test_install_adds_only_the_outbox_import_root(bare_venv: tuple[set[str], set[str]]) -> None:
    added_to_site, added_to_bin = bare_venv
    assert added_to_site == {"outbox", DIST_INFO}
    assert added_to_bin == {"outbox"}


@pytest.fixture(scope="module")
def base_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    venv = new_venv(tmp_path_factory.mktemp("base") / "venv")
    venv.install(str(wheel))
    return venv


def test_base_install_brings_none_of_the_daemons_dependencies(base_venv: Venv) -> None:
    installed = base_venv.distributions()
    assert {"opsconductor-outbox", "pydantic", "pydantic-settings"} <= installed
    assert not installed & DAEMON_DEPENDENCIES
    result = base_venv.run(
        "python", "-c", "import outbox; print(outbox.__version__, outbox.__file__)"
    )
    assert result.returncode == 0, result.stderr
    version, location = result.stdout.split()
    assert version == __version__
    assert Path(location).is_relative_to(base_venv.site_packages)
    result = base_venv.run("outbox", "--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"outbox {__version__}")


@pytest.mark.parametrize(
    ("command", "extra"),
    [
        ("relay", "relay"),
        ("project", "projections"),
        ("monitor", "monitor"),
        ("migrate", "migrate"),
    ],
)
def test_a_command_without_its_extra_names_the_extra(
    base_venv: Venv, command: str, extra: str
) -> None:
    result = base_venv.run("outbox", command)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"pip install 'opsconductor-outbox[{extra}]'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def monitor_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    venv = new_venv(tmp_path_factory.mktemp("monitor") / "venv")
    venv.install(f"{wheel}[monitor,migrate]", "psycopg[binary]")
    return venv


@pytest.fixture
def redis_keys_removed(stream_prefix: str) -> Iterator[None]:
    """Whatever the monitor writes under this test's prefix is deleted afterwards."""
    yield
    client = redis.Redis.from_url(Settings().redis_streams_url.get_secret_value())
    try:
        keys = list(client.scan_iter(match=f"{stream_prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read()


@pytest.mark.usefixtures("redis_keys_removed")
def test_installed_monitor_serves_the_dashboard_from_package_data(
    monitor_venv: Venv, empty_database_url: str, stream_prefix: str, tmp_path: Path
) -> None:
    env = {
        "DATABASE_URL": empty_database_url,
        "REDIS_STREAMS_URL": Settings().redis_streams_url.get_secret_value(),
        "STREAM_PREFIX": stream_prefix,
        "MONITOR_HOST": "127.0.0.1",
    }
    served_from = monitor_venv.run(
        "python", "-c", "from outbox.monitor import app; print(app.STATIC)"
    )
    assert served_from.returncode == 0, served_from.stderr
    assert Path(served_from.stdout.strip()).is_relative_to(monitor_venv.site_packages)
    migrated = monitor_venv.run("outbox", "migrate", timeout=180, **env)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "monitor.log"
    with log_path.open("wb") as log:
        monitor = subprocess.Popen(
            [str(monitor_venv.bin / "outbox"), "monitor", "--port", str(port)],
            cwd=monitor_venv.root,
            env=monitor_venv.env(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert monitor.poll() is None, f"the monitor exited: {log_path.read_text()}"
            assert time.monotonic() < deadline, f"no /health in 60 s: {log_path.read_text()}"
            try:
                if get(f"{url}/health")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)

        status, page = get(f"{url}/")
        assert status == 200
        assert page == (STATIC / "index.html").read_bytes()
        assets = re.findall(r'(?:href|src)="(/static/[^"]+)"', page.decode())
        assert {"/static/app.js", "/static/style.css"} <= set(assets)
        for asset in assets:
            status, body = get(f"{url}{asset}")
            assert status == 200, asset
            assert body == (STATIC / asset.removeprefix("/static/")).read_bytes(), asset

        # The image's HEALTHCHECK, on the monitor the image would run.
        health = run(
            [sys.executable, str(ROOT / "scripts" / "docker-healthcheck.py"), str(monitor.pid)],
            cwd=tmp_path,
            timeout=30,
        )
        assert health.returncode == 0, health.stderr

        monitor.send_signal(signal.SIGINT)
        assert monitor.wait(timeout=30) == 0, log_path.read_text()
    finally:
        if monitor.poll() is None:
            monitor.kill()
            monitor.wait(timeout=10)


# --- the public API type-checks in a user's code, against the installed wheel ---

USER_SERVICE = ROOT / "tests" / "typing" / "user_service.py"
#: What a service's own mypy configuration would say: strict, and asyncpg ships no hints.
MYPY_CONFIG = """
[mypy]
strict = True
python_version = 3.11

[mypy-asyncpg.*]
ignore_missing_imports = True
"""
MISUSES = """

async def forgot_await(session: AsyncSession) -> uuid.UUID:
    event = outbox.emit(session, service="assets", event_type="x", data={})
    return event.event_id


def bad_keyword(session: Session) -> None:
    outbox.emit(session, service="assets", event_type="x", payload={})
"""


@pytest.fixture(scope="module")
def typing_venv(monitor_venv: Venv) -> Venv:
    """The [monitor,migrate] venv (SQLAlchemy, asyncpg, redis) with the service's mypy."""
    monitor_venv.install("mypy==2.4.1")
    return monitor_venv


def _mypy(venv: Venv, folder: Path, source: str) -> subprocess.CompletedProcess[str]:
    folder.mkdir(exist_ok=True)
    (folder / "service.py").write_text(source)
    (folder / "mypy.ini").write_text(MYPY_CONFIG)
    return run(
        [str(venv.bin / "python"), "-m", "mypy", "--config-file", "mypy.ini", "service.py"],
        cwd=folder,
        timeout=300,
        env=venv.env(),
    )


def test_a_service_using_the_public_api_passes_mypy_strict(
    typing_venv: Venv, tmp_path: Path
) -> None:
    """py.typed is in the one root, and emit(), the streams client and projections have
    precise signatures: tests/typing/user_service.py checks clean under --strict."""
    result = _mypy(typing_venv, tmp_path / "service", USER_SERVICE.read_text())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout


def test_mypy_catches_a_misuse_of_the_public_api(typing_venv: Venv, tmp_path: Path) -> None:
    """The check has teeth: an async emit() not awaited, or a wrong keyword, is an error."""
    result = _mypy(typing_venv, tmp_path / "misuse", USER_SERVICE.read_text() + MISUSES)
    assert result.returncode == 1, result.stdout + result.stderr
    assert '"Coroutine[Any, Any, Event]" has no attribute "event_id"' in result.stdout
    assert 'Unexpected keyword argument "payload"' in result.stdout
    # Every error is in the misuses, none in the correct code above them.
    first_misuse = len(USER_SERVICE.read_text().splitlines()) + 1
    lines = [int(m) for m in re.findall(r"^service\.py:(\d+): error", result.stdout, re.M)]
    assert lines
    assert min(lines) >= first_misuse, result.stdout
