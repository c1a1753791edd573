"""The outbox's migrations beside a service's own alembic history (docs/adopting.md).

Each test makes the service's project the way a service has one: ``alembic init alembic``,
then one revision of the service's own table, then the documented changes, and nothing else.

- Way (a), the lead recommendation: ``outbox migrate`` with its own version table.
- Way (b): the outbox versions included in the service's history.

Either way the service's ``alembic revision --autogenerate`` must propose nothing about the
outbox's tables once ``include_name`` / ``include_object`` are passed, and an ``outbox migrate``
run on tables another history made says what to do instead of failing with a traceback.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from alembic.script import ScriptDirectory

from outbox import migrations
from outbox.migrations import runner
from outbox.naming import TABLES
from tests.conftest import sqlalchemy_url

ALEMBIC = str(Path(sys.executable).with_name("alembic"))
OUTBOX = str(Path(sys.executable).with_name("outbox"))
OUTBOX_TABLES = set(TABLES)

SERVICE_REVISION = """
import sqlalchemy as sa
from alembic import op

revision = "svc_0001_assets"
down_revision = None
branch_labels = ("assets",)
depends_on = None


def upgrade():
    op.create_table("assets", sa.Column("id", sa.Integer, primary_key=True))


def downgrade():
    op.drop_table("assets")
"""

# The service's models, as its env.py would import them.
SERVICE_MODELS = """
import sqlalchemy as sa

target_metadata = sa.MetaData()
sa.Table("assets", target_metadata, sa.Column("id", sa.Integer, primary_key=True))
"""


def _run(args: list[str], cwd: Path, url: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "DATABASE_URL": url, **env}
    environment.pop("OUTBOX_SCHEMA", None)
    environment.update(env)
    return subprocess.run(
        args, cwd=cwd, env=environment, capture_output=True, text=True, timeout=120
    )


def _service(tmp_path: Path, url: str, *, include_outbox_filters: bool) -> Path:
    """A project made by ``alembic init``, pointed at ``url``, with one revision of its own."""
    project = tmp_path / "assets_service"
    project.mkdir()
    result = _run([ALEMBIC, "init", "alembic"], project, url)
    assert result.returncode == 0, result.stderr
    ini = project / "alembic.ini"
    ini.write_text(
        ini.read_text().replace(
            "sqlalchemy.url = driver://user:pass@localhost/dbname",
            "sqlalchemy.url = " + sqlalchemy_url(url, "psycopg").replace("%", "%%"),
        )
    )
    (project / "models.py").write_text(SERVICE_MODELS)
    env_py = project / "alembic" / "env.py"
    text = env_py.read_text().replace(
        "target_metadata = None", "from models import target_metadata"
    )
    if include_outbox_filters:
        # The documented change: autogenerate leaves the outbox's tables alone.
        text = text.replace(
            "from alembic import context", "from alembic import context\n\nimport outbox.migrations"
        )
        text = text.replace(
            "connection=connection, target_metadata=target_metadata",
            "connection=connection, target_metadata=target_metadata,\n"
            "            include_name=outbox.migrations.include_name,\n"
            "            include_object=outbox.migrations.include_object,",
        )
        assert "include_object=outbox.migrations.include_object" in text
    env_py.write_text(text)
    (project / "alembic" / "versions" / "svc_0001_assets.py").write_text(SERVICE_REVISION)
    return project


def _include_outbox_history(project: Path) -> None:
    """Way (b), the documented change to alembic.ini: list our versions beside the service's.
    ``alembic init`` writes ``path_separator = os`` (":" here), which would split the
    package-resource form ``outbox.migrations:versions`` in two; one location per line works
    whatever the platform."""
    ini = project / "alembic.ini"
    text = ini.read_text()
    assert "\npath_separator = os\n" in text
    text = text.replace(
        "\npath_separator = os\n",
        "\npath_separator = newline\n"
        "version_locations =\n"
        "    %(here)s/alembic/versions\n"
        "    outbox.migrations:versions\n",
    )
    ini.write_text(text)


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r[0] for r in rows.fetchall()}


def _autogenerate(project: Path, url: str, *options: str, **env: str) -> str:
    """The body of ``upgrade()`` in the revision the service's autogenerate writes."""
    result = _run(
        [ALEMBIC, "revision", "--autogenerate", "-m", "check", *options], project, url, **env
    )
    assert result.returncode == 0, result.stderr
    (written,) = [p for p in (project / "alembic" / "versions").glob("*_check.py")]
    source = written.read_text()
    written.unlink()
    match = re.search(r"def upgrade\(\) -> None:\n(.*?)\ndef downgrade", source, re.S)
    assert match, source
    return match.group(1)


def _statements(body: str) -> list[str]:
    """The code lines of a generated ``upgrade()``: no docstring, no comments."""
    return [
        line.strip()
        for line in body.splitlines()
        if line.strip() and not line.strip().startswith(("#", '"""'))
    ]


def test_way_a_outbox_migrate_beside_the_services_own_alembic(
    empty_database_url: str, tmp_path: Path
) -> None:
    project = _service(tmp_path, empty_database_url, include_outbox_filters=True)
    own = _run([ALEMBIC, "upgrade", "head"], project, empty_database_url)
    assert own.returncode == 0, own.stderr
    ours = _run([OUTBOX, "migrate"], project, empty_database_url)
    assert ours.returncode == 0, ours.stderr
    tables = _tables(empty_database_url)
    assert {"assets", "alembic_version", migrations.VERSION_TABLE} | OUTBOX_TABLES <= tables
    # Two version tables, each with its own history's head.
    with psycopg.connect(empty_database_url) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [
            ("svc_0001_assets",)
        ]
        (ours_at,) = conn.execute(f"SELECT version_num FROM {migrations.VERSION_TABLE}").fetchone()  # type: ignore[misc]
    head = ScriptDirectory.from_config(runner.alembic_config()).get_current_head()
    assert ours_at == head
    assert _statements(_autogenerate(project, empty_database_url)) == ["pass"]


def test_without_the_filters_autogenerate_would_drop_the_outbox(
    empty_database_url: str, tmp_path: Path
) -> None:
    """What include_name/include_object prevent (so the test above can fail)."""
    project = _service(tmp_path, empty_database_url, include_outbox_filters=False)
    assert _run([ALEMBIC, "upgrade", "head"], project, empty_database_url).returncode == 0
    assert _run([OUTBOX, "migrate"], project, empty_database_url).returncode == 0
    body = _autogenerate(project, empty_database_url)
    assert "op.drop_table('outbox_events')" in body
    assert f"op.drop_table('{migrations.VERSION_TABLE}')" in body


def test_way_b_the_outbox_history_inside_the_services_alembic(
    empty_database_url: str, tmp_path: Path
) -> None:
    project = _service(tmp_path, empty_database_url, include_outbox_filters=True)
    _include_outbox_history(project)
    heads = _run([ALEMBIC, "heads"], project, empty_database_url)
    assert heads.returncode == 0, heads.stderr
    assert "(assets)" in heads.stdout
    assert "(outbox)" in heads.stdout  # our revisions were found
    result = _run([ALEMBIC, "upgrade", "heads"], project, empty_database_url)
    assert result.returncode == 0, result.stderr
    tables = _tables(empty_database_url)
    assert {"assets", "alembic_version"} | OUTBOX_TABLES <= tables
    assert migrations.VERSION_TABLE not in tables  # one history, one version table
    # With two heads the service names its own branch, as for any new revision of its own.
    body = _autogenerate(project, empty_database_url, "--head", "assets@head")
    assert _statements(body) == ["pass"]

    # `outbox migrate` on these tables explains instead of failing on CREATE TABLE.
    refused = _run([OUTBOX, "migrate"], project, empty_database_url)
    assert refused.returncode == 2
    assert "Traceback" not in refused.stderr
    assert "already exist" in refused.stderr
    assert "alembic upgrade heads" in refused.stderr
    assert "outbox migrate --stamp" in refused.stderr
    # Taking them over, as the message says.
    stamped = _run([OUTBOX, "migrate", "--stamp", "head"], project, empty_database_url)
    assert stamped.returncode == 0, stamped.stderr
    again = _run([OUTBOX, "migrate"], project, empty_database_url)
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize("way", ["a", "b"])
def test_both_ways_put_the_outbox_in_its_own_schema(
    empty_database_url: str, tmp_path: Path, way: str
) -> None:
    """OUTBOX_SCHEMA=outbox: the service's table stays in public, ours go to "outbox"."""
    project = _service(tmp_path, empty_database_url, include_outbox_filters=True)
    if way == "a":
        assert _run([ALEMBIC, "upgrade", "head"], project, empty_database_url).returncode == 0
        result = _run([OUTBOX, "migrate"], project, empty_database_url, OUTBOX_SCHEMA="outbox")
    else:
        _include_outbox_history(project)
        result = _run(
            [ALEMBIC, "upgrade", "heads"], project, empty_database_url, OUTBOX_SCHEMA="outbox"
        )
    assert result.returncode == 0, result.stderr
    with psycopg.connect(empty_database_url) as conn:
        rows = conn.execute(
            "SELECT schemaname, tablename FROM pg_tables WHERE schemaname IN ('public', 'outbox')"
        ).fetchall()
    in_outbox = {t for s, t in rows if s == "outbox"}
    in_public = {t for s, t in rows if s == "public"}
    assert in_outbox >= OUTBOX_TABLES
    assert "assets" in in_public
    assert not OUTBOX_TABLES & in_public
    head = ["--head", "assets@head"] if way == "b" else []
    body = _autogenerate(project, empty_database_url, *head, OUTBOX_SCHEMA="outbox")
    assert _statements(body) == ["pass"]


def test_recipe_text_in_the_docs_is_the_one_tested() -> None:
    """docs/adopting.md shows exactly the alembic.ini and env.py lines these tests apply."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "adopting.md").read_text()
    for line in (
        "path_separator = newline",
        "    outbox.migrations:versions",
        "include_name=outbox.migrations.include_name,",
        "include_object=outbox.migrations.include_object,",
        "alembic upgrade heads",
        "outbox migrate --stamp",
    ):
        assert line in doc, line
