"""Bad input (issue 2): each bad file is marked failed with a reason naming the file and the problem, the run
goes on, nothing partial of it is indexed, and ``eegcache ingest`` exits 1 while the good files are ingested.

One tree holds every case beside good files; it is ingested once through the real CLI (a subprocess).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import IS_ROOT, SHORT, TSE_512, copy_cache
from edf_factory import (
    Rec,
    cli,
    csv_head,
    object_dirs,
    patch_bytes,
    query,
    rec_channels,
    run_cli,
    write_csv_bi,
    write_edf,
    write_rec,
)

GOOD = (
    Rec("train", "aaaaaaba", 1, 2003, "01_tcp_ar", 0, fs=250, duration_s=120, events=((30.0, 50.0),), seed=11),
    Rec("dev", "aaaaaabb", 1, 2005, "02_tcp_le", 1, fs=256, duration_s=60, seed=12),
)
NON_UTF8 = b"bad\xffname"


@dataclass(frozen=True)
class Case:
    stem: str
    phrases: tuple[str, ...]  # what the reason must say besides the file name


CASES = (
    Case("truncated", ("truncated EDF",)),
    # a damaged EDF is named as such, whatever is wrong beside it (the header is read only when the annotation fails)
    Case("truncnoann", ("truncated EDF",)),
    Case("truncbadann", ("truncated EDF",)),
    Case("notedf", ("not an EDF file",)),
    Case("badheader", ("unreadable EDF header", "signal count")),
    Case("noannotation", ("no annotation file",)),
    Case("annheader", ("expected header",)),
    Case("anntime", ("not a number", "abc")),
    Case("annorder", ("before",)),
    Case("missing", ("Fz", "Pz")),
    Case("zerolength", ("zero-length",)),
    Case("noperm", ("permission denied",)),  # only when not root: root reads any file
    Case(NON_UTF8.decode("utf-8", "backslashreplace"), ("not valid UTF-8",)),
)
RUN_CASES = tuple(c for c in CASES if not (IS_ROOT and c.stem == "noperm"))


def _case(case: Case):
    marks = [pytest.mark.skip(reason="root reads files whatever their permissions")] if case not in RUN_CASES else []
    return pytest.param(case, id=case.stem.replace("\\", "_"), marks=marks)


def _plain(duration_s: int = 60, **kw) -> Rec:
    """Channels for a recording outside the TUSZ layout (a plain folder of EDFs)."""
    return Rec("train", "zzzzzzzz", 1, 2000, "01_tcp_ar", 0, duration_s=duration_s, **kw)


def _write_plain(folder: Path, stem: str, rec: Rec, events=((5.0, 9.0),)) -> Path:
    edf = write_edf(folder / f"{stem}.edf", rec_channels(rec))
    write_csv_bi(folder / f"{stem}.csv_bi", events, rec.duration_s)
    return edf


def _build(root: Path) -> None:
    """Write the good recordings, the short one and every bad case of CASES."""
    for rec in GOOD:
        write_rec(root, rec)
    bad = root / "bad"
    bad.mkdir(parents=True)

    edf = _write_plain(bad, "truncated", _plain())
    with open(edf, "r+b") as f:
        f.truncate(edf.stat().st_size * 6 // 10)

    for stem in ("truncnoann", "truncbadann"):
        edf = _write_plain(bad, stem, _plain())
        with open(edf, "r+b") as f:
            f.truncate(edf.stat().st_size * 6 // 10)
    (bad / "truncnoann.csv_bi").unlink()
    (bad / "truncbadann.csv_bi").write_text(csv_head("truncbadann", 60) + "TERM,7.0000,3.0000,seiz,1.0000\n")

    (bad / "notedf.edf").write_bytes(b"PK\x03\x04 this is a zip archive, not an EDF file\n" * 40)
    write_csv_bi(bad / "notedf.csv_bi", [], 60)

    edf = _write_plain(bad, "badheader", _plain())
    patch_bytes(edf, 252, b"ab  ")  # the signal count

    edf = _write_plain(bad, "noannotation", _plain())
    edf.with_suffix(".csv_bi").unlink()

    _write_plain(bad, "annheader", _plain())
    (bad / "annheader.csv_bi").write_text("# duration = 60.00 secs\nchan,begin,end,what,conf\nTERM,1.0,2.0,seiz,1.0\n")

    _write_plain(bad, "anntime", _plain())
    (bad / "anntime.csv_bi").write_text(csv_head("anntime", 60) + "TERM,1.0000,abc,seiz,1.0000\n")

    _write_plain(bad, "annorder", _plain())
    (bad / "annorder.csv_bi").write_text(csv_head("annorder", 60) + "TERM,7.0000,3.0000,seiz,1.0000\n")

    _write_plain(bad, "missing", _plain(missing=("FZ", "PZ")))

    edf = _write_plain(bad, "zerolength", _plain())
    n_signals = int(edf.read_bytes()[252:256])
    patch_bytes(edf, 236, b"0       ")  # number of data records
    with open(edf, "r+b") as f:
        f.truncate(256 * (n_signals + 1))

    if not IS_ROOT:  # root reads any file whatever its mode
        edf = _write_plain(bad, "noperm", _plain())
        edf.chmod(0)

    # A file name that is not UTF-8 (bytes paths), with a valid EDF and annotation.
    src = _write_plain(bad, "tmpname", _plain())
    os.rename(src, os.path.join(os.fsencode(bad), NON_UTF8 + b".edf"))
    os.rename(src.with_suffix(".csv_bi"), os.path.join(os.fsencode(bad), NON_UTF8 + b".csv_bi"))

    # Shorter than one window: ingested with 0 windows, not failed.
    write_rec(root, SHORT)


@dataclass(frozen=True)
class Run:
    root: Path
    cache: Path
    rc: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    base = tmp_path_factory.mktemp("bad")
    root, cache = base / "src", base / "cache"
    _build(root)
    done = run_cli("ingest", root, "--cache", cache, "--quiet")
    return Run(root, cache, done.returncode, done.stdout, done.stderr)


def test_run_goes_on_and_exits_1(bad_run: Run) -> None:
    """The good recordings (and the short one) are ingested despite every bad file; the exit status is 1."""
    assert bad_run.rc == 1, bad_run.stderr
    assert "Traceback" not in bad_run.stderr
    status = dict(query(bad_run.cache, "SELECT recording, status FROM recording_status"))
    for rec in (*GOOD, SHORT):
        assert status[rec.stem] == "ingested"
    failed = {r for r, s in status.items() if s == "failed"}
    assert failed == {c.stem for c in RUN_CASES}
    assert f"failed {len(RUN_CASES)}" in bad_run.stdout
    assert bad_run.stderr.count("FAILED ") == len(RUN_CASES)


@pytest.mark.parametrize("case", [_case(c) for c in CASES])
def test_failure_has_a_clear_reason(bad_run: Run, case: Case) -> None:
    """The recording is failed; its reason names the file and says what is wrong; the CLI prints it."""
    ((status, reason),) = query(bad_run.cache, "SELECT status, reason FROM recording_status WHERE recording = ?",
                                (case.stem,))
    assert status == "failed"
    assert case.stem in reason, reason
    for phrase in case.phrases:
        assert phrase in reason, reason
    assert f"FAILED {bad_run.root / 'bad' / case.stem}.edf: {reason}" in bad_run.stderr


@pytest.mark.parametrize("case", [_case(c) for c in CASES])
def test_nothing_partial_is_indexed(bad_run: Run, case: Case) -> None:
    """A failed recording has no object, no windows and no events."""
    rows = query(bad_run.cache, "SELECT r.object_key, (SELECT count(*) FROM windows w WHERE w.recording_id = r.id), "
                                "(SELECT count(*) FROM events e WHERE e.recording_id = r.id) FROM recordings r "
                                "WHERE r.name = ?", (case.stem,))
    assert rows == [(None, 0, 0)]


def test_only_the_good_recordings_are_stored(bad_run: Run) -> None:
    """The object folders and rows are exactly the ingested recordings'; no staging folder is left behind."""
    referenced = {k for (k,) in query(bad_run.cache, "SELECT object_key FROM recordings WHERE object_key IS NOT NULL")}
    assert len(referenced) == len(GOOD) + 1
    assert object_dirs(bad_run.cache) == referenced
    assert query(bad_run.cache, "SELECT count(*) FROM objects") == [(len(referenced),)]
    staging = bad_run.cache / "staging"
    assert not staging.exists() or not any(staging.iterdir())


def test_short_recording_ingested_with_zero_windows(bad_run: Run) -> None:
    assert query(bad_run.cache, "SELECT status, n_windows FROM recording_status WHERE recording = ?",
                 (SHORT.stem,)) == [("ingested", 0)]


def test_non_utf8_name_is_recorded_readably(bad_run: Run) -> None:
    """The undecodable byte is kept visible as an escape in the stored path, not dropped or replaced."""
    escaped = NON_UTF8.decode("utf-8", "backslashreplace")
    assert escaped == "bad\\xffname"
    rows = query(bad_run.cache, "SELECT source_path, status FROM recording_status WHERE recording = ?", (escaped,))
    assert rows == [(str(bad_run.root / "bad" / f"{escaped}.edf"), "failed")]


def test_rerun_fails_the_same_and_keeps_the_good(bad_run: Run, tmp_path: Path) -> None:
    """A second run over the same bad tree: same statuses, the good files untouched, exit 1 again."""
    cache = tmp_path / "cache"
    copy_cache(bad_run.cache, cache)
    before = query(cache, "SELECT recording, status, reason, n_windows FROM recording_status ORDER BY source_path")
    again = cli("ingest", bad_run.root, "--cache", cache, "--quiet")
    assert again.returncode == 1
    assert "ingested 0" in again.stdout
    after = query(cache, "SELECT recording, status, reason, n_windows FROM recording_status ORDER BY source_path")
    assert after == before


def test_fixed_file_is_ingested_next_time(tree, tmp_path: Path) -> None:
    """A failure is not sticky: once the missing annotation is supplied, the next run ingests the file and
    clears the reason."""
    root, edfs = tree(TSE_512)
    ann = edfs[TSE_512].with_suffix(".tse_bi")
    hidden = ann.rename(tmp_path / "hidden.tse_bi")
    cache = tmp_path / "cache"
    assert cli("ingest", root, "--cache", cache, "--quiet").returncode == 1
    hidden.rename(ann)
    done = cli("ingest", root, "--cache", cache, "--quiet")
    assert done.returncode == 0, done.stderr
    assert query(cache, "SELECT status, reason, n_windows FROM recording_status") == [("ingested", None, 2)]


def test_source_path_that_does_not_exist(tmp_path: Path) -> None:
    """A clear error naming the path, non-zero exit, and no cache created."""
    cache = tmp_path / "cache"
    done = run_cli("ingest", tmp_path / "nowhere", "--cache", cache)
    assert done.returncode != 0
    assert "nowhere" in done.stderr and "does not exist" in done.stderr
    assert "Traceback" not in done.stderr
    assert not cache.exists()


def test_cache_that_cannot_be_written(tmp_path: Path) -> None:
    """Not root: a read-only cache folder. Root ignores modes, so there the cache path lies under a regular
    file, which no one can create. Either way: a clear error naming the cache, non-zero exit."""
    root = tmp_path / "src"
    write_rec(root, SHORT)
    if IS_ROOT:
        blocker = tmp_path / "somefile"
        blocker.write_text("a file, not a folder\n")
        cache, expected = blocker / "cache", "cannot create the cache folder"
    else:
        cache = tmp_path / "readonly"
        cache.mkdir()
        cache.chmod(0o555)
        expected = "not writable"
    try:
        done = run_cli("ingest", root, "--cache", cache, "--quiet")
    finally:
        if not IS_ROOT:
            cache.chmod(0o755)
    assert done.returncode != 0
    assert expected in done.stderr and str(cache) in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_cache_given_as_a_file(tmp_path: Path) -> None:
    """--cache naming an existing regular file is refused before anything runs."""
    root = tmp_path / "src"
    write_rec(root, SHORT)
    target = tmp_path / "afile"
    target.write_text("x")
    done = cli("ingest", root, "--cache", target, "--quiet")
    assert done.returncode != 0 and "afile" in done.stderr and "Traceback" not in done.stderr
    assert target.read_text() == "x"


def test_index_that_is_not_a_database(tmp_path: Path) -> None:
    """An index.sqlite that is garbage: a clear error, not a traceback, and the file is left alone."""
    root = tmp_path / "src"
    write_rec(root, SHORT)
    cache = tmp_path / "cache"
    cache.mkdir()
    garbage = b"this is not a sqlite database" * 100
    (cache / "index.sqlite").write_bytes(garbage)
    done = cli("ingest", root, "--cache", cache, "--quiet")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "index" in done.stderr.lower()
    assert (cache / "index.sqlite").read_bytes() == garbage


def test_symlink_loop_in_the_tree(tree, tmp_path: Path) -> None:
    """A folder symlinked to its own ancestor does not trap the walk; each recording is ingested once."""
    root, _ = tree(SHORT)
    (root / "edf" / "loop").symlink_to(root, target_is_directory=True)
    done = cli("ingest", root, "--cache", tmp_path / "cache", "--quiet")
    assert done.returncode == 0, done.stderr
    assert query(tmp_path / "cache", "SELECT recording, status FROM recording_status") == [(SHORT.stem, "ingested")]


def test_recording_that_turns_bad_loses_its_windows(tree, tmp_path: Path) -> None:
    """Ingested once, then its annotation is damaged: the next run marks it failed, removes its windows (no
    stale labels stay queryable) and exits 1; its object is then garbage that gc removes."""
    root, edfs = tree(TSE_512)
    cache = tmp_path / "cache"
    assert cli("ingest", root, "--cache", cache, "--quiet").returncode == 0
    edfs[TSE_512].with_suffix(".tse_bi").write_text("version = tse_v1.0.0\n\n10.0 oops seiz 1.0\n")
    done = cli("ingest", root, "--cache", cache, "--quiet")
    assert done.returncode == 1
    ((status, reason, n),) = query(cache, "SELECT status, reason, n_windows FROM recording_status")
    assert (status, n) == ("failed", 0) and "oops" in reason and "not a number" in reason
    assert query(cache, "SELECT count(*) FROM window_labels") == [(0,)]
    assert cli("gc", "--cache", cache, "--grace", "0").returncode == 0
    assert object_dirs(cache) == set()
