"""Migrations carry data forward: a cache made by the first schema revision upgrades to the newest with its
rows intact, and downgrades back where a downgrade is defined."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

from alembic.script import ScriptDirectory
from sqlalchemy import text

from eegcache.index import db


def _first_revision_cache(cache: Path) -> None:
    """A cache as eegcache wrote it at revision 0001, with one recording, a window set and windows."""
    cache.mkdir()
    engine = db.make_engine(db.default_url(cache))
    db.upgrade(engine, "0001")
    with db.writer(engine).begin() as conn:
        conn.execute(text(
            "INSERT INTO objects VALUES ('k1', 'l1', 'd', '{}', 19, 30720, 256.0, 'float32', 10, 'x', '2026-01-01')"))
        conn.execute(text(
            "INSERT INTO recordings (id, source_path, name, split, status, object_key, duration_s, updated_at) "
            "VALUES (1, '/t/a.edf', 'aaaaaaaa_s001_t000', 'train', 'ingested', 'k1', 120.0, '2026-01-01')"))
        conn.execute(text("INSERT INTO window_sets VALUES (1, 60.0, 60.0, 256.0, 15360, 15360)"))
        conn.execute(text("INSERT INTO windows VALUES (1, 1, 1, 0, 15360, 2), (2, 1, 1, 15360, 0, 0)"))
    engine.dispose()


def _rows(cache: Path) -> list[tuple]:
    engine = db.make_engine(db.default_url(cache))
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT recording, split, start_s, label, seizure_fraction FROM window_labels "
                                 "ORDER BY window_id")).all()
    engine.dispose()
    return [tuple(r) for r in rows]


def test_first_revision_upgrades_with_data_intact(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _first_revision_cache(cache)
    before = _rows(cache)
    assert before == [("aaaaaaaa_s001_t000", "train", 0.0, "full_seizure", 1.0),
                      ("aaaaaaaa_s001_t000", "train", 60.0, "no_seizure", 0.0)]
    # any command upgrades an older index on open
    done = subprocess.run([sys.executable, "-m", "eegcache", "stats", "--cache", str(cache), "--json"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    engine = db.make_engine(db.default_url(cache))
    assert db.current_revision(engine) == db.head_revision() != "0001"
    engine.dispose()
    assert _rows(cache) == before
    assert '"full_seizure": 1' in done.stdout


def test_downgrade_to_the_first_revision_keeps_data(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _first_revision_cache(cache)
    engine = db.open_index(cache)
    before = _rows(cache)
    db.downgrade(engine, "0001")
    assert db.current_revision(engine) == "0001"
    assert _rows(cache) == before
    db.upgrade(engine)
    assert _rows(cache) == before
    engine.dispose()


MIGRATIONS = Path(str(resources.files("eegcache.migrations")))


def _alembic_revisions(script_location: Path) -> tuple[dict[str, tuple[str, ...]], str]:
    """Alembic's own reading of the scripts: ``({revision: its down revisions}, head)``."""
    scripts = ScriptDirectory(str(script_location))
    downs = {r.revision: r.down_revision for r in scripts.walk_revisions()}
    return {rev: (d,) if isinstance(d, str) else tuple(d or ()) for rev, d in downs.items()}, scripts.get_current_head()


def test_the_revisions_read_without_alembic_are_alembics() -> None:
    """``db.head_revision`` (which every command compares with the index's revision) reads the migration scripts
    without importing Alembic: it must find the same revisions, links and head as Alembic does."""
    revisions, head = _alembic_revisions(MIGRATIONS)
    assert db.script_revisions() == revisions
    assert db.head_revision() == head
    assert len(revisions) >= 7


def test_a_new_migration_is_the_new_head_for_both(tmp_path: Path) -> None:
    """A migration added later becomes the head of both readings, even one written with annotated assignments
    (Alembic's own newer template) rather than as migrations/script.py.mako writes it: nothing besides the script
    has to be updated."""
    shutil.copytree(MIGRATIONS / "versions", tmp_path / "versions", ignore=shutil.ignore_patterns("__pycache__"))
    old_head = db.head_revision()
    (tmp_path / "versions" / "0099_next.py").write_text(
        f'"""A later migration.\n\nRevision ID: 0099\nRevises: {old_head}\n"""\n\n'
        "from collections.abc import Sequence\n\n"
        'revision: str = "0099"\n'
        f'down_revision: str | Sequence[str] | None = "{old_head}"\n'
        "branch_labels: str | Sequence[str] | None = None\n"
        "depends_on: str | Sequence[str] | None = None\n\n\n"
        "def upgrade() -> None:\n    pass\n\n\ndef downgrade() -> None:\n    pass\n")
    revisions, head = _alembic_revisions(tmp_path)
    assert head == "0099" and revisions["0099"] == (old_head,)
    assert db.script_revisions(tmp_path / "versions") == revisions
