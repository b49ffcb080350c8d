"""The ``eegcache`` command line, run as real subprocesses: help, stats, read-only SQL, config files, synth."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import INGESTED, MISSING, SHORT, Standard
from edf_factory import FS, cli, expected_mask, invoke, query, run_cli

COMMANDS = [(), ("ingest",), ("stats",), ("sql",), ("verify",), ("gc",), ("synth",), ("db",), ("db", "upgrade"),
            ("db", "current")]  # fmt: skip
TUSZ_PATH = re.compile(
    r"edf/(train|dev|eval)/([a-z]{8})/s(\d{3})_(\d{4})(_\d{2}_\d{2})?/(0[1-4]_tcp_(ar|le)(_a)?)/\2_s\3_t(\d{3})\.(edf|csv|csv_bi)$"
)


def _index_checksum(cache: Path) -> str:
    """sha256 over every row of every table and view, the schema, and the header pragmas."""
    h = hashlib.sha256()
    names = [r[0] for r in query(cache, "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') ORDER BY name")]
    for name in names:
        h.update(repr((name, sorted(query(cache, f'SELECT * FROM "{name}"'), key=repr))).encode())
    h.update(repr(query(cache, "SELECT type, name, sql FROM sqlite_master ORDER BY name")).encode())
    for pragma in ("user_version", "journal_mode", "application_id", "schema_version"):
        h.update(repr(query(cache, f"PRAGMA {pragma}")).encode())
    return h.hexdigest()


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "main")
def test_help_on_every_command(command: tuple[str, ...]) -> None:
    """Every command and group answers --help (and -h) with its usage; commands on a cache document --cache."""
    for flag in ("--help", "-h"):
        result = invoke(*command, flag)
        assert result.exit_code == 0, result.output
        assert "Usage:" in result.stdout
    if command and command not in (("db",), ("synth",)):
        assert "--cache" in result.stdout


def test_module_and_console_script_both_run_main() -> None:
    """`python -m eegcache.cli`, `python -m eegcache` and the `eegcache` script all reach the click group."""
    for cmd in ([sys.executable, "-m", "eegcache.cli"], [sys.executable, "-m", "eegcache"],
                [str(Path(sys.executable).parent / "eegcache")]):
        done = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "ingest" in done.stdout and "verify" in done.stdout, cmd


def test_stats_json(standard: Standard) -> None:
    """One JSON object: recordings by status, windows by label, per-set rows, hours and bytes."""
    done = run_cli("stats", "--cache", standard.cache, "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["recordings"] == {"ingested": 6, "failed": 1, "skipped": 1}
    assert set(data["windows"]) == {"no_seizure", "partial_seizure", "full_seizure"}
    assert data["windows"] == standard.summary.window_counts
    hours = query(standard.cache, "SELECT sum(duration_s) / 3600.0 FROM recordings WHERE status = 'ingested'")[0][0]
    assert data["eeg_hours"] == pytest.approx(hours)
    on_disk = sum(p.stat().st_size for p in (standard.cache / "objects").rglob("*") if p.is_file())
    assert data["bytes"]["objects"] == on_disk
    seizure_s = sum(expected_mask(rec.events, rec.n_samples).sum() / FS for rec in INGESTED)
    assert data["seizure_hours"] * 3600 == pytest.approx(seizure_s, abs=len(INGESTED) / FS)


def test_stats_text(standard: Standard) -> None:
    done = cli("stats", "--cache", standard.cache)
    assert done.returncode == 0
    assert "recordings: ingested 6, failed 1, skipped 1" in done.stdout


def test_stats_on_a_folder_that_is_no_cache(tmp_path: Path) -> None:
    done = run_cli("stats", "--cache", tmp_path / "nothing")
    assert done.returncode != 0 and "not an eegcache cache" in done.stderr
    assert not (tmp_path / "nothing").exists()


# --- sql ------------------------------------------------------------------------------------------------------

COUNT_SQL = "SELECT label, count(*) AS n FROM window_labels GROUP BY label ORDER BY label"


def test_sql_json_is_a_list_of_row_objects(standard: Standard) -> None:
    done = run_cli("sql", "--cache", standard.cache, COUNT_SQL, "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert rows == [{"label": label, "n": n} for label, n in query(standard.cache, COUNT_SQL)]


def test_sql_csv(standard: Standard) -> None:
    done = cli("sql", "--cache", standard.cache, COUNT_SQL, "--csv")
    assert done.returncode == 0
    rows = list(csv.reader(io.StringIO(done.stdout)))
    assert rows[0] == ["label", "n"]
    assert [(a, int(b)) for a, b in rows[1:]] == query(standard.cache, COUNT_SQL)


def test_sql_table(standard: Standard) -> None:
    done = cli("sql", "--cache", standard.cache, COUNT_SQL, "--table")
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["label", "n"] and set(lines[1].replace(" ", "")) == {"-"}
    assert [tuple(line.split()) for line in lines[2:]] == [(a, str(b)) for a, b in query(standard.cache, COUNT_SQL)]
    assert cli("sql", "--cache", standard.cache, COUNT_SQL).stdout == done.stdout  # table is the default


def test_sql_param_binding(standard: Standard) -> None:
    """:NAME is bound to the value, which never becomes SQL (an injection attempt matches nothing)."""
    sql = "SELECT count(*) AS n FROM window_labels WHERE label = :label"
    done = cli("sql", "--cache", standard.cache, sql, "-p", "label=full_seizure", "--json")
    assert json.loads(done.stdout) == [{"n": standard.summary.window_counts["full_seizure"]}]
    done = cli("sql", "--cache", standard.cache, sql, "--param", "label=x' OR '1'='1", "--json")
    assert json.loads(done.stdout) == [{"n": 0}]
    bad = cli("sql", "--cache", standard.cache, sql, "-p", "novalue")
    assert bad.returncode != 0 and "NAME=VALUE" in bad.stderr


def test_sql_limit_caps_rows_and_says_so(standard: Standard) -> None:
    done = cli("sql", "--cache", standard.cache, "SELECT window_id FROM window_labels", "--json", "--limit", "3")
    assert done.returncode == 0
    assert len(json.loads(done.stdout)) == 3
    assert "stopped at 3 rows" in done.stderr and "--limit" in done.stderr
    full = cli("sql", "--cache", standard.cache, "SELECT count(*) AS n FROM window_labels", "--json", "--limit", "3")
    assert "stopped" not in full.stderr


def test_sql_timeout_stops_a_runaway_query(standard: Standard) -> None:
    """A recursive CTE counting to 10^12 is interrupted at the time limit with a clear error."""
    runaway = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000000) "
               "SELECT count(*) FROM c")
    done = run_cli("sql", "--cache", standard.cache, runaway, "--timeout", "0.5", timeout=120)
    assert done.returncode != 0
    assert "stopped" in done.stderr and "0.5 s time limit" in done.stderr


REFUSED = [
    "INSERT INTO window_sets (window_s, stride_s, fs, window_samples, stride_samples) VALUES (1, 1, 256, 256, 256)",
    "UPDATE recordings SET status = 'failed'",
    "DELETE FROM windows",
    "DROP VIEW window_labels",
    "DROP TABLE windows",
    "CREATE TABLE t (x)",
    "CREATE VIEW v AS SELECT 1",
    "CREATE INDEX ix_t ON windows (label)",
    "ATTACH DATABASE '{tmp}/attached.db' AS other",
    "PRAGMA journal_mode = DELETE",
    "PRAGMA user_version = 5",
    "PRAGMA query_only = 0",
    "REPLACE INTO window_sets (id, window_s, stride_s, fs, window_samples, stride_samples) VALUES (1, 1, 1, 1, 1, 1)",
    "WITH x AS (SELECT 1) DELETE FROM windows",
    "VACUUM INTO '{tmp}/copy.db'",
    "SELECT load_extension('/nonexistent')",
    "ALTER TABLE windows ADD COLUMN y",
]


@pytest.mark.parametrize("statement", REFUSED, ids=lambda s: " ".join(s.split()[:2]))
def test_sql_refuses_writes(cache_copy: Path, tmp_path: Path, statement: str) -> None:
    """Any statement that would write (or attach, or change a pragma) fails with a clear error, exits non-zero
    and leaves the index (every row, the schema, the pragmas) and the file system unchanged."""
    statement = statement.format(tmp=tmp_path)
    before = _index_checksum(cache_copy)
    result = invoke("sql", "--cache", cache_copy, statement)
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert any(w in result.stderr for w in ("refused", "not authorized", "authorization denied")), result.stderr
    assert _index_checksum(cache_copy) == before
    assert not (tmp_path / "attached.db").exists() and not (tmp_path / "copy.db").exists()


def test_sql_refuses_writes_in_a_real_process(cache_copy: Path) -> None:
    """The same refusal end to end through `python -m eegcache.cli`."""
    before = _index_checksum(cache_copy)
    done = run_cli("sql", "--cache", cache_copy, "DELETE FROM windows")
    assert done.returncode == 1 and "refused" in done.stderr and "Traceback" not in done.stderr
    assert _index_checksum(cache_copy) == before


def test_sql_refuses_a_second_statement(cache_copy: Path) -> None:
    before = _index_checksum(cache_copy)
    result = invoke("sql", "--cache", cache_copy, "SELECT 1; DELETE FROM windows")
    assert result.exit_code == 1 and "Error:" in result.stderr, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert _index_checksum(cache_copy) == before


def test_sql_reads_a_read_only_pragma(standard: Standard) -> None:
    done = cli("sql", "--cache", standard.cache, "PRAGMA user_version", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [{"user_version": 0}]


def test_sql_reads_schema_pragmas(standard: Standard) -> None:
    """PRAGMA table_info(view), listed by the library as read-only, describes the public views."""
    done = cli("sql", "--cache", standard.cache, "PRAGMA table_info(window_labels)", "--json")
    assert done.returncode == 0, done.stderr
    assert [r["name"] for r in json.loads(done.stdout)][:2] == ["window_id", "recording"]


# --- ingest options -------------------------------------------------------------------------------------------


def test_ingest_json_summary_and_config_file(tree, tmp_path: Path) -> None:
    """A TOML config sets window/stride and preprocessing (float16); --json prints the summary; the stored object
    and the window set follow the config."""
    root, _ = tree(SHORT)
    config = tmp_path / "cfg.toml"
    config.write_text('window = 10\nstride = 5\n\n[preprocess]\ndtype = "float16"\nnotch_hz = [50, 60]\n')
    cache = tmp_path / "cache"
    done = cli("ingest", root, "--cache", cache, "--config", config, "--json", "--quiet")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["ingested"] == 1 and summary["failed"] == 0
    assert sum(summary["window_counts"].values()) == (30 - 10) // 5 + 1
    (key,) = query(cache, "SELECT object_key FROM recordings")[0]
    group = zarr.open_group(str(cache / "objects" / key[:2] / key), mode="r")
    assert group["signal"].dtype == np.float16
    spec = json.loads(query(cache, "SELECT spec_json FROM objects")[0][0])
    assert spec["notch_hz"] == [50.0, 60.0] and spec["dtype"] == "float16"
    assert query(cache, "SELECT DISTINCT window_s, stride_s FROM window_labels") == [(10.0, 5.0)]


def test_ingest_json_stdout_is_json_even_with_failures(tree, tmp_path: Path) -> None:
    """--json output is machine-readable whatever happened; failures are reported on stderr."""
    root, _ = tree(SHORT, MISSING)
    done = cli("ingest", root, "--cache", tmp_path / "cache", "--json", "--quiet")
    assert done.returncode == 1
    assert done.stdout.startswith("{"), done.stdout[:300]
    summary = json.loads(done.stdout)
    assert summary["failed"] == 1 and summary["failures"][0][0].endswith(f"{MISSING.stem}.edf")


@pytest.mark.parametrize("content, phrase", [
    ("windw = 10\n", "unknown setting"),
    ('[preprocess]\nfs = -1\n', "fs must be positive"),
    ('[preprocess]\nbandpass_hz = [0.5, 200]\n', "bandpass_hz"),
    ("window = [\n", "cfg.toml"),
])
def test_bad_config_is_a_clear_error(tree, tmp_path: Path, content: str, phrase: str) -> None:
    root, _ = tree(SHORT)
    config = tmp_path / "cfg.toml"
    config.write_text(content)
    result = invoke("ingest", root, "--cache", tmp_path / "cache", "--config", config, "--quiet")
    assert result.exit_code == 1 and phrase in result.stderr, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


@pytest.mark.parametrize("args, phrase", [
    (("--window", "0.001"), "not a whole positive number of samples"),
    (("--stride", "0"), "positive"),
    (("--fs", "0"), "fs must be positive"),
])
def test_bad_window_options_are_clear_errors(tree, tmp_path: Path, args: tuple[str, ...], phrase: str) -> None:
    root, _ = tree(SHORT)
    result = invoke("ingest", root, "--cache", tmp_path / "cache", "--quiet", *args)
    assert result.exit_code == 1 and phrase in result.stderr, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


# --- synth ----------------------------------------------------------------------------------------------------


def test_synth_writes_a_tusz_tree_that_ingests(tmp_path: Path) -> None:
    """`eegcache synth` writes EDF + .csv + .csv_bi on TUSZ paths; the same seed gives the same bytes; the tree
    ingests with every recording accounted for."""
    if not Path(__file__).parents[1].joinpath("eegcache", "synth.py").exists():
        pytest.skip("eegcache/sources/synth.py is not there yet")
    out = tmp_path / "synth"
    done = run_cli("synth", out, "--hours", "0.05", "--seed", "3")
    assert done.returncode == 0, done.stderr
    files = sorted(p for p in out.rglob("*") if p.is_file())
    edfs = [p for p in files if p.suffix == ".edf"]
    assert edfs and all(TUSZ_PATH.search(p.relative_to(out).as_posix()) for p in files)
    for edf in edfs:
        assert edf.with_suffix(".csv").is_file() and edf.with_suffix(".csv_bi").is_file()
    again = tmp_path / "again"
    assert cli("synth", again, "--hours", "0.05", "--seed", "3").returncode == 0
    for p in files:
        assert (again / p.relative_to(out)).read_bytes() == p.read_bytes()
    cache = tmp_path / "cache"
    ingested = cli("ingest", out, "--cache", cache, "--quiet", "--json")
    assert ingested.returncode in (0, 1), ingested.stderr
    status = query(cache, "SELECT status, count(*) FROM recording_status GROUP BY status")
    assert sum(n for _, n in status) == len(edfs)
    assert dict(status).get("ingested", 0) >= 1
    shutil.rmtree(again)


def test_sql_json_refuses_duplicate_column_names(standard: Standard) -> None:
    """Regression (issue 13): `sql --json "SELECT 1 AS a, 2 AS a"` printed [{"a": 2}], silently dropping a column.
    --json now refuses with a message; --csv and --table keep both columns."""
    done = run_cli("sql", "--cache", standard.cache, "--json", "SELECT 1 AS a, 2 AS a, 3 AS b")
    assert done.returncode == 1 and done.stdout == "" and "Traceback" not in done.stderr
    assert "column names must differ" in done.stderr and "'a' 2 times" in done.stderr, done.stderr
    rows = list(csv.reader(io.StringIO(run_cli("sql", "--cache", standard.cache, "--csv",
                                               "SELECT 1 AS a, 2 AS a").stdout)))
    assert rows == [["a", "a"], ["1", "2"]]
    ok = run_cli("sql", "--cache", standard.cache, "--json", "SELECT 1 AS a, 2 AS a_2")
    assert json.loads(ok.stdout) == [{"a": 1, "a_2": 2}]


def test_index_copy_to_a_missing_folder_is_a_clear_message(standard: Standard, tmp_path: Path) -> None:
    """Regression (issue 13): `index copy --to` a folder that does not exist ended in a traceback ("unable to open
    database file"); a mistyped --from created an empty SQLite file."""
    source = f"sqlite:///{standard.cache / 'index.sqlite'}"
    done = run_cli("index", "copy", "--from", source, "--to", f"sqlite:///{tmp_path / 'missing' / 'index.sqlite'}")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"the target folder {tmp_path / 'missing'} does not exist" in done.stderr, done.stderr
    assert not (tmp_path / "missing").exists()
    typo = tmp_path / "typo.sqlite"
    done = run_cli("index", "copy", "--from", f"sqlite:///{typo}", "--to", f"sqlite:///{tmp_path / 'out.sqlite'}")
    assert done.returncode == 1 and "Traceback" not in done.stderr and f"no source index at {typo}" in done.stderr
    assert not typo.exists() and not (tmp_path / "out.sqlite").exists()
    done = run_cli("index", "copy", "--from", source, "--to", "postgresql://nobody@127.0.0.1:1/none")
    assert done.returncode == 1 and "Traceback" not in done.stderr and "cannot copy the index" in done.stderr
    copied = run_cli("index", "copy", "--from", source, "--to", f"sqlite:///{tmp_path / 'out.sqlite'}")
    assert copied.returncode == 0 and "row counts match" in copied.stdout, copied.stderr


def test_the_program_exits_with_the_commands_code_and_its_index_closed(cache_copy: Path, tmp_path: Path) -> None:
    """``eegcache`` as a program (``cli.run``) collects the command's garbage before it freezes the rest for a quick
    exit: the index an undisposed engine held is closed as at a plain exit (no WAL left), and exit codes and
    messages are the command's."""
    done = run_cli("verify", "--cache", cache_copy)
    assert done.returncode == 0 and "0 problem(s)" in done.stdout, done.stderr
    assert not (cache_copy / "index.sqlite-wal").exists()
    done = run_cli("stats", "--cache", tmp_path / "nothing")
    assert done.returncode == 1 and "is not an eegcache cache" in done.stderr
    done = subprocess.run([sys.executable, "-m", "eegcache", "no-such-command"], capture_output=True, text=True)
    assert done.returncode == 2 and "No such command" in done.stderr
