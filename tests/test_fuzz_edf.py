"""Hostile EDF input (issue 5): the header parser and whole ingests over random, mutated and absurd files and
hostile path names.

Every file must end as a clear per-file outcome: an ``EdfError`` (a failed recording) whose message names the
file, or a successful read; never another exception, never a crash or hang of the whole run, never memory that
grows with what a header merely declares. ``read_header`` is fuzzed in process (it reads at most the declared
header, ~1 MiB); whole ingests run as real ``eegcache ingest`` processes under an address-space limit (so a
runaway allocation fails instead of swapping the machine) and their peak RSS is measured with ``wait4``.
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from edf_factory import Rec, csv_head, eegcache_cmd, patch_bytes, query, rec_channels, write_edf, write_rec
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from eegcache.ops.ingest import ingest
from eegcache.pipeline.spec import IngestConfig
from eegcache.sources.edf import MAX_SAMPLES_PER_RECORD, EdfError, EdfHeader, read_header
from eegcache.store import LocalObjectStore

# --- the EDF header layout (EDF spec: 256 fixed bytes, then each field for every signal in turn) ---------------
FIXED = {
    "version": (0, 8), "patient": (8, 80), "recording": (88, 80), "startdate": (168, 8), "starttime": (176, 8),
    "header_bytes": (184, 8), "reserved": (192, 44), "n_records": (236, 8), "record_s": (244, 8), "ns": (252, 4),
}  # fmt: skip
SIGNAL = (("label", 16), ("transducer", 80), ("dimension", 8), ("physical_min", 8), ("physical_max", 8),
          ("digital_min", 8), ("digital_max", 8), ("prefilter", 80), ("samples_per_record", 8), ("reserved", 32))  # fmt: skip
HOSTILE_VALUES = (
    b"", b"0", b"-0", b"-1", b"-250", b"+5", b"1_0", b"0x10", b"1e3", b"3.5", b"nan", b"NaN", b"inf", b"-inf",
    b"1e308", b"1e999", b"-1e308", b"1e-300", b"0.000001", b"99999999", b"4096", b"4097", b"1048576", b"1048577",
    b"\xff\xfe", b"\x00\x00", b" 1 2 ", b"EEG FZ-REF", b"EEG FP1-REF", b"01.01.85", b"EDF+C", b"BDF",
)  # fmt: skip
AS_LIMIT = 3 << 30  # address space of an ingest process under test: a runaway allocation fails fast
RSS_GROWTH_MB = 200

REAL = Rec("train", "aaaaaaea", 1, 2003, "01_tcp_ar", 0, fs=250, duration_s=61, events=((20.0, 35.0),), seed=51)
GOOD = (
    Rec("train", "aaaaaaeb", 1, 2004, "01_tcp_ar", 0, fs=256, duration_s=90, events=((10.0, 70.0),), seed=52),
    Rec("dev", "aaaaaaec", 1, 2005, "02_tcp_le", 0, fs=400, duration_s=70, seed=53),
)


def signal_field(ns: int, field: str, i: int) -> tuple[int, int]:
    """(offset, width) of one signal's field."""
    offset = 256
    for name, width in SIGNAL:
        if name == field:
            return offset + i * width, width
        offset += width * ns
    raise KeyError(field)


def put(data: bytearray, offset: int, width: int, value: bytes) -> None:
    data[offset : offset + width] = value.ljust(width)[:width]


class Real:
    """A real EDF's bytes, its annotation's bytes and its signal count (short repr: hypothesis prints it)."""

    def __init__(self, edf: bytes, annotation: bytes, ns: int) -> None:
        self.edf, self.annotation, self.ns = edf, annotation, ns

    def __repr__(self) -> str:
        return f"Real({len(self.edf)} bytes, ns={self.ns})"


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Real:
    """A real EDF written by pyedflib (19 electrodes, decoy, EKG, 1 Hz channels) and its csv_bi."""
    edf = write_rec(tmp_path_factory.mktemp("real"), REAL)
    data = edf.read_bytes()
    return Real(data, edf.with_suffix(".csv_bi").read_bytes(), int(data[252:256]))


def check_header(path: Path) -> EdfHeader | None:
    """read_header's contract: a sane header, or an EdfError whose message starts with the file name."""
    try:
        header = read_header(path)
    except EdfError as exc:
        assert str(exc).startswith(f"{path.name}: "), str(exc)
        assert len(str(exc)) < 2000
        return None
    ns = len(header.labels)
    assert 0 < ns == len(header.samples_per_record)
    assert header.header_bytes == 256 * (ns + 1)
    assert header.n_records > 0 and math.isfinite(header.record_s) and header.record_s > 0
    assert all(0 < n <= MAX_SAMPLES_PER_RECORD for n in header.samples_per_record)
    assert header.file_size >= header.header_bytes + header.n_records * sum(header.samples_per_record) * 2
    return header


# --- read_header, in process ------------------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(blob=st.binary(max_size=4096))
def test_read_header_random_bytes(tmp_path: Path, blob: bytes) -> None:
    path = tmp_path / "random.edf"
    path.write_bytes(blob)
    check_header(path)


@FUZZ
@given(blob=st.binary(max_size=3000), ns=st.integers(-5, 5000), consistent=st.booleans())
def test_read_header_random_bytes_behind_a_valid_magic(tmp_path: Path, blob: bytes, ns: int, consistent: bool) -> None:
    """Past the first check: random fields, and a signal count that may or may not match the header size."""
    data = bytearray(b"0       " + blob.ljust(248, b" "))
    put(data, *FIXED["ns"], str(ns).encode())
    if consistent:
        put(data, *FIXED["header_bytes"], str(256 * (ns + 1)).encode())
    path = tmp_path / "magic.edf"
    path.write_bytes(bytes(data))
    check_header(path)


@st.composite
def mutations(draw: st.DrawFn, ns: int) -> list[tuple]:
    """1-4 edits of a real file: a fixed field, one signal's field or every signal's, a byte, or a truncation."""
    value = st.one_of(st.sampled_from(HOSTILE_VALUES), st.binary(max_size=16), st.text(max_size=8).map(str.encode))
    one = st.one_of(
        st.tuples(st.just("fixed"), st.sampled_from(sorted(FIXED)), value),
        st.tuples(st.just("signal"), st.sampled_from([f for f, _ in SIGNAL]),
                  st.one_of(st.integers(0, ns - 1), st.just(-1)), value),
        st.tuples(st.just("byte"), st.integers(0, 256 * (ns + 1) - 1), st.integers(0, 255)),
        st.tuples(st.just("truncate"), st.floats(0.0, 1.0)),
    )
    return draw(st.lists(one, min_size=1, max_size=4))


def apply(blob: bytes, ns: int, edits: list[tuple]) -> bytes:
    data = bytearray(blob)
    for edit in edits:
        if edit[0] == "fixed":
            put(data, *FIXED[edit[1]], edit[2])
        elif edit[0] == "signal":
            for i in range(ns) if edit[2] < 0 else [edit[2]]:
                put(data, *signal_field(ns, edit[1], i), edit[3])
        elif edit[0] == "byte":
            if edit[1] < len(data):
                data[edit[1]] = edit[2]
        else:
            del data[int(edit[1] * len(data)) :]
    return bytes(data)


@FUZZ
@given(data=st.data())
def test_read_header_mutated_real_file(tmp_path: Path, real: Real, data: st.DataObject) -> None:
    blob = apply(real.edf, real.ns, data.draw(mutations(real.ns)))
    path = tmp_path / "mutated.edf"
    path.write_bytes(blob)
    check_header(path)


NAME_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(NAME_CHARS, min_size=1, max_size=40), cut=st.integers(0, 2000))
def test_read_header_error_names_a_hostile_file_name(tmp_path: Path, real: Real, name: str, cut: int) -> None:
    """Spaces, quotes, unicode, control characters: the message starts with the exact name."""
    assume(name not in (".", "..") and len((name + ".edf").encode()) < 250)
    path = tmp_path / f"{name}.edf"
    path.write_bytes(real.edf[:cut])
    assert check_header(path) is None


def _declare(real: Real, **fields: bytes) -> bytearray:
    data = bytearray(real.edf[: 256 * (real.ns + 1)])
    for name, value in fields.items():
        put(data, *FIXED[name], value)
    return data


def test_read_header_memory_stays_bounded_whatever_is_declared(tmp_path: Path, real: Real) -> None:
    """Files declaring terabytes (a 1 TB sparse file with a valid header; 4096 signals of 2^20 samples per record
    and 99999999 records in a 1 MiB header-only file; 10^9 / 10^12 / negative counts) never make the parser
    allocate more than the header: peak RSS grows by less than 200 MB."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sparse = tmp_path / "terabyte.edf"
    sparse.write_bytes(bytes(_declare(real, n_records=b"99999999")))
    per_record = sum(int(real.edf[o : o + 8]) for o, _ in (signal_field(real.ns, "samples_per_record", i)
                                                            for i in range(real.ns))) * 2
    with open(sparse, "r+b") as f:
        f.truncate(256 * (real.ns + 1) + 99_999_999 * per_record)
    header = check_header(sparse)
    assert header is not None and header.file_size > 10**12 and header.duration_s == 99_999_999
    huge = bytearray(b"0       ".ljust(256))
    put(huge, *FIXED["ns"], b"4096")
    put(huge, *FIXED["header_bytes"], str(256 * 4097).encode())
    put(huge, *FIXED["n_records"], b"99999999")
    put(huge, *FIXED["record_s"], b"1")
    body = bytearray(b" " * (256 * 4096))
    for i in range(4096):
        put(body, *signal_field(4096, "samples_per_record", i), b"1048576")
    cases = {
        "wide.edf": bytes(huge + body),  # ~8.6e20 bytes declared
        "wide_header_cut.edf": bytes(huge + body[:1000]),
        "spr_1e9.edf": apply(bytes(_declare(real)), real.ns, [("signal", "samples_per_record", -1, b"1e9")]),
        "n_1e12.edf": bytes(_declare(real, n_records=b"1e12")),
        "n_neg.edf": bytes(_declare(real, n_records=b"-99")),
        "ns_neg.edf": bytes(_declare(real, ns=b"-19")),
        "ns_9999.edf": bytes(_declare(real, ns=b"9999", header_bytes=b"2560000")),
    }
    for name, blob in cases.items():
        path = tmp_path / name
        path.write_bytes(blob)
        assert check_header(path) is None, name
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < RSS_GROWTH_MB, grown_mb


# --- whole ingests, as real processes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Limited:
    returncode: int
    stdout: str
    stderr: str
    maxrss_mb: float


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, resource.RLIM_INFINITY))


def run_limited(*args: object, timeout: float = 300, cwd: Path | None = None) -> Limited:
    """``eegcache ARGS`` under the address-space limit; peak RSS from wait4; killed (and reported) on timeout."""
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"eegcache-fuzz-{os.getpid()}-{time.monotonic_ns()}"
    with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:
        proc = subprocess.Popen(eegcache_cmd(*args), stdout=out, stderr=err, preexec_fn=_limit, cwd=cwd)
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            _, status, usage = os.wait4(proc.pid, 0)
            raise AssertionError(f"eegcache {' '.join(map(str, args))} still ran after {timeout} s (killed)")
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    texts = [Path(f"{log}.{s}").read_text(errors="replace") for s in ("out", "err")]
    for s in ("out", "err"):
        Path(f"{log}.{s}").unlink()
    return Limited(proc.returncode, texts[0], texts[1], usage.ru_maxrss / 1024)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """The good recordings (written once), and the peak RSS of an ingest of them alone."""
    root = tmp_path_factory.mktemp("good") / "src"
    for rec in GOOD:
        write_rec(root, rec)
    done = run_limited("ingest", root, "--cache", root.parent / "cache", "--quiet")
    assert done.returncode == 0, done.stderr[-2000:]
    return root, done.maxrss_mb


def build_tree(root: Path, good: Path, bad: dict[str, bytes], annotation: bytes) -> dict[str, Path]:
    """The good recordings plus each hostile EDF (with a valid annotation beside it) under root/bad/."""
    shutil.copytree(good, root)
    paths = {}
    for stem, blob in bad.items():
        edf = root / "bad" / f"{stem}.edf"
        edf.parent.mkdir(parents=True, exist_ok=True)
        edf.write_bytes(blob)
        edf.with_suffix(".csv_bi").write_bytes(annotation)
        paths[stem] = edf
    return paths


def check_run(done: Limited, cache: Path, bad: dict[str, Path], base_rss: float) -> dict[str, str]:
    """Good recordings ingested; each hostile file failed with its name in the reason (and in a FAILED line) or
    ingested with a finite signal and its windows; no traceback; exit 1 iff something failed; bounded RSS."""
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    status = {Path(p).stem: (s, r) for p, s, r in query(cache, "SELECT source_path, status, reason FROM recording_status")}
    for rec in GOOD:
        assert status.get(rec.stem) == ("ingested", None), (rec.stem, status.get(rec.stem), done.stderr[-2000:])
    outcome = {}
    for stem, edf in bad.items():
        assert stem in status, (f"{stem} was never registered", done.stderr[-2000:])
        state, reason = status[stem]
        outcome[stem] = state if state != "failed" else reason
        if state == "failed":
            assert reason.startswith(f"{edf.name}: "), reason
            assert f"FAILED {edf}: {reason}" in done.stderr
        elif state == "skipped":  # two mutations gave the same bytes: stored and windowed once, by design
            twin = reason.removeprefix("same EDF and annotation bytes as ").split(";")[0]  # dataset/relative path
            ((twin_path,),) = query(cache, "SELECT source_path FROM recording_status WHERE dataset || '/' || rel_path = ?",
                                    (twin,))
            assert Path(twin_path).read_bytes() == edf.read_bytes(), reason
        else:
            assert state == "ingested", (stem, state, reason)
            ((key, n_samples),) = query(cache, "SELECT o.key, o.n_samples FROM recordings r JOIN objects o "
                                               "ON o.key = r.object_key JOIN datasets d ON d.id = r.dataset_id "
                                               "WHERE d.root || '/' || r.rel_path = ?", (str(edf),))
            signal = np.asarray(LocalObjectStore(cache).open(key)["signal"][...])
            assert np.isfinite(signal).all()
            n = query(cache, "SELECT n_windows FROM recording_status WHERE source_path = ?", (str(edf),))[0][0]
            assert n == max(0, (n_samples - 60 * 256) // (60 * 256) + 1)
    assert done.returncode == (1 if any(s == "failed" for s, _ in status.values()) else 0), done.stderr[-2000:]
    assert done.maxrss_mb < base_rss + RSS_GROWTH_MB, (done.maxrss_mb, base_rss)
    return outcome


def fuzz_ingest(tmp_path: Path, real: Real, baseline: tuple[Path, float], batch: list[list[tuple]]) -> dict:
    bad = {}
    for i, edits in enumerate(batch):
        bad[f"fuzz{i:02d}"] = apply(real.edf, real.ns, edits)
    root, cache = tmp_path / f"src{time.monotonic_ns()}", tmp_path / f"cache{time.monotonic_ns()}"
    paths = build_tree(root, baseline[0], bad, real.annotation)
    done = run_limited("ingest", root, "--cache", cache, "--quiet")
    outcome = check_run(done, cache, paths, baseline[1])
    shutil.rmtree(root)
    shutil.rmtree(cache)
    return outcome


INGEST_FUZZ = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                         HealthCheck.data_too_large])


@settings(max_examples=4, **INGEST_FUZZ)
@given(data=st.data())
def test_ingest_fuzz_hostile_files_among_good_ones(tmp_path: Path, real: Real, baseline, data: st.DataObject) -> None:
    """Each example: 6 mutated copies of a real EDF beside the good recordings, one real ``eegcache ingest``."""
    fuzz_ingest(tmp_path, real, baseline, [data.draw(mutations(real.ns)) for _ in range(6)])


@pytest.mark.stress
@settings(max_examples=60, **INGEST_FUZZ)
@given(data=st.data())
def test_ingest_fuzz_stress(tmp_path: Path, real: Real, baseline, data: st.DataObject) -> None:
    fuzz_ingest(tmp_path, real, baseline, [data.draw(mutations(real.ns)) for _ in range(8)])


def absurd_files(real: Real) -> dict[str, bytes]:
    """Hand-written hostile headers: huge declared sizes, negative counts, NaN/inf durations, truncations."""
    ns = real.ns

    def edit(*edits: tuple) -> bytes:
        return apply(real.edf, ns, list(edits))

    return {
        "ns_4096_declared": edit(("fixed", "ns", b"4096"), ("fixed", "header_bytes", str(256 * 4097).encode())),
        "spr_1e9": edit(("signal", "samples_per_record", -1, b"1e9")),
        "spr_99999999": edit(("signal", "samples_per_record", -1, b"99999999")),
        "spr_negative": edit(("signal", "samples_per_record", 3, b"-250")),
        "n_records_1e12": edit(("fixed", "n_records", b"1e12")),
        "n_records_99999999": edit(("fixed", "n_records", b"99999999")),
        "n_records_negative": edit(("fixed", "n_records", b"-1")),
        "ns_negative": edit(("fixed", "ns", b"-1")),
        "header_bytes_negative": edit(("fixed", "header_bytes", b"-256")),
        "duration_nan": edit(("fixed", "record_s", b"nan")),
        "duration_inf": edit(("fixed", "record_s", b"inf")),
        "duration_minus_inf": edit(("fixed", "record_s", b"-inf")),
        "duration_zero": edit(("fixed", "record_s", b"0")),
        "duration_negative": edit(("fixed", "record_s", b"-1")),
        "duration_3s": edit(("fixed", "record_s", b"3")),
        "truncated_in_fixed_header": real.edf[:100],
        "truncated_in_signal_header": real.edf[: 256 * (ns + 1) - 7],
        "truncated_in_data": real.edf[: len(real.edf) - 1],
        "empty": b"",
        "all_zero_bytes": bytes(len(real.edf)),
        "labels_non_ascii": edit(("signal", "label", 0, "EEG FP1-RÉF".encode())),
        "edf_plus_reserved": edit(("fixed", "reserved", b"EDF+D")),
        "bad_start_date": edit(("fixed", "startdate", b"99.99.99")),
    }


def test_ingest_absurd_headers_each_fail_alone(tmp_path: Path, real: Real, baseline) -> None:
    """One real ingest over every hand-written hostile file beside the good ones."""
    bad = absurd_files(real)
    paths = build_tree(tmp_path / "src", baseline[0], bad, real.annotation)
    cache = tmp_path / "cache"
    done = run_limited("ingest", tmp_path / "src", "--cache", cache, "--quiet")
    outcome = check_run(done, cache, paths, baseline[1])
    valid = {"duration_3s", "edf_plus_reserved", "bad_start_date"}  # unusual but readable files
    assert {s for s in set(bad) - valid if outcome[s] == "ingested"} == set()
    assert "truncated" in outcome["truncated_in_data"] and "truncated" in outcome["ns_4096_declared"]
    assert outcome["duration_3s"] == "ingested"


@pytest.mark.parametrize("record_s", [b"0.000001", b"1e-300", b"99999999"])
def test_implausible_record_duration_is_a_clear_per_file_error(
    tmp_path: Path, real: Real, baseline, record_s: bytes
) -> None:
    """A header whose rate is absurd is refused from the header (a per-file EdfError), not by a crash of the run
    and not by running out of memory. Was a bug found by this file: record_s 0.000001 / 1e-300 made resample_poly
    raise ValueError out of prepare() (the serial run died), record_s 99999999 made it design a multi-GB filter
    for a 110 KB file; fixed in 6090af5 (eegcache/sources/edf.py read_recording bounds the EEG rate)."""
    blob = apply(real.edf, real.ns, [("fixed", "record_s", record_s)])
    paths = build_tree(tmp_path / "src", baseline[0], {"absurd_rate": blob}, real.annotation)
    done = run_limited("ingest", tmp_path / "src", "--cache", tmp_path / "cache", "--quiet")
    outcome = check_run(done, tmp_path / "cache", paths, baseline[1])
    assert "out of memory" not in outcome["absurd_rate"] and "sampling rate" in outcome["absurd_rate"], outcome


@pytest.mark.parametrize("physical_max", [b"nan", b"inf", b"1e308"])
def test_non_finite_calibration_is_refused_not_stored_flat(tmp_path: Path, real: Real, physical_max: bytes) -> None:
    """A physical range that makes the samples NaN/inf/1e307 fails the file. Was a bug found by this file: the
    z-score mapped a NaN std to 0 and the recording was ingested as an all-zero signal; fixed in 6090af5
    (eegcache/sources/edf.py read_recording refuses non-finite or > 1 kV samples)."""
    blob = apply(real.edf, real.ns, [("signal", "physical_max", -1, physical_max)])
    edf = tmp_path / "src" / "calibration.edf"
    edf.parent.mkdir()
    edf.write_bytes(blob)
    edf.with_suffix(".csv_bi").write_bytes(real.annotation)
    summary = ingest(tmp_path / "src", tmp_path / "cache", IngestConfig(), progress=False)
    if summary.failed == 0:
        ((key,),) = query(tmp_path / "cache", "SELECT object_key FROM recordings")
        signal = np.asarray(LocalObjectStore(tmp_path / "cache").open(key)["signal"][...])
        flat = int((np.abs(signal).max(axis=1) == 0).sum())
        raise AssertionError(f"ingested; {flat} of {signal.shape[0]} stored channels are all zero")
    assert summary.failures[0][1].startswith("calibration.edf: ")


# --- hostile path names and odd files in the tree ---------------------------------------------------------------

HOSTILE_NAMES = (
    "with space", "it's \"quoted\"", "ünïcødé-脑电图-✓", "semi;colon $(touch pwned) `id` &", "-starts-with-dash",
    "back\\slash", "tab\there", "new\nline", "a..b", "...", "%s%n{0}", "emoji 🧠",
)  # fmt: skip


def test_hostile_path_names_and_odd_files(tmp_path: Path, baseline) -> None:
    """Recordings under hostile names (and folders) are ingested under their exact paths and names; a symlink
    loop (folder and file), a dangling symlink and a link to /dev/zero each fail alone, naming the file; a source
    path spelled with '..' and a trailing slash, or relative, names the same recordings."""
    root = tmp_path / "src"
    folders = ("dir with space", "ünï", "...", "quo'te")
    expected = {}
    for i, name in enumerate(HOSTILE_NAMES):
        rec = Rec("train", "zzzzzzzz", 1, 2000, "01_tcp_ar", 0, duration_s=61, seed=100 + i)
        edf = root / folders[i % len(folders)] / f"{name}.edf"
        write_edf(edf, rec_channels(rec))
        # csv_head, not write_csv_bi: the factory would put the hostile stem (a newline...) inside the file
        edf.with_suffix(".csv_bi").write_text(csv_head("hostile", rec.duration_s) + "TERM,5.0000,9.0000,seiz,1.0000\n")
        expected[str(edf)] = name
    (root / "loop").symlink_to(root, target_is_directory=True)
    odd = {"file_loop": root / "file_loop.edf", "dangling": root / "dangling.edf", "dev_zero": root / "dev_zero.edf"}
    odd["file_loop"].symlink_to(odd["file_loop"])
    odd["dangling"].symlink_to(root / "nowhere.edf")
    odd["dev_zero"].symlink_to("/dev/zero")
    for edf in odd.values():
        edf.with_suffix(".csv_bi").write_text("# duration = 60.00 secs\n")
    cache = tmp_path / "cache"
    done = run_limited("ingest", f"{root}/.../../", "--cache", cache, "--quiet", timeout=120)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.returncode == 1
    rows = {p: (name, s, r)
            for p, name, s, r in query(cache, "SELECT source_path, recording, status, reason FROM recording_status")}
    assert {p: (n, s) for p, (n, s, _) in rows.items() if s == "ingested"} == \
        {p: (n, "ingested") for p, n in expected.items()}
    for what, edf in odd.items():
        _, status, reason = rows[str(edf)]
        assert status == "failed" and reason.startswith(f"{edf.name}: "), (what, reason)
    assert all(".." not in Path(p).parts for p in rows)
    again = run_limited("ingest", os.path.relpath(root, tmp_path), "--cache", cache, "--quiet", cwd=tmp_path)
    assert again.returncode == 1 and "ingested 0," in again.stdout, again.stdout
    assert query(cache, "SELECT count(*) FROM recordings") == [(len(rows),)]


def test_a_fifo_in_the_tree_fails_alone_instead_of_hanging_the_run(tmp_path: Path, baseline) -> None:
    """A FIFO named .edf fails as 'not a regular file' instead of blocking the run in open() forever (was a bug,
    found by this test; fixed in 6c0867e)."""
    root = tmp_path / "src"
    shutil.copytree(baseline[0], root)
    os.mkfifo(root / "pipe.edf")
    (root / "pipe.csv_bi").write_text("# duration = 60.00 secs\n")
    done = run_limited("ingest", root, "--cache", tmp_path / "cache", "--quiet", timeout=45)
    assert done.returncode == 1 and f"FAILED {root / 'pipe.edf'}: pipe.edf: not a regular file" in done.stderr
    assert query(tmp_path / "cache", "SELECT count(*) FROM recordings WHERE status = 'ingested'") == [(len(GOOD),)]


def test_src_with_dotdot_after_a_symlink_is_the_folder_the_user_named(tmp_path: Path, baseline) -> None:
    """SRC 'view/link/../files' where link is a symlink means what the kernel resolves. Was a bug found by this
    file: os.path.abspath dropped 'link/..' lexically (refused an existing folder, or ingested another tree);
    fixed in 6090af5 (eegcache/ops/ingest.py resolves SRC with os.path.realpath)."""
    real_parent = tmp_path / "real"
    shutil.copytree(baseline[0], real_parent / "files")
    (real_parent / "deep").mkdir()
    (tmp_path / "view").mkdir()
    (tmp_path / "view" / "link").symlink_to(real_parent / "deep", target_is_directory=True)
    src = tmp_path / "view" / "link" / ".." / "files"
    assert sorted(os.listdir(src)) == sorted(os.listdir(real_parent / "files"))  # what the kernel resolves
    done = run_limited("ingest", src, "--cache", tmp_path / "cache", "--quiet")
    assert done.returncode == 0, done.stderr[-1000:]
    assert query(tmp_path / "cache", "SELECT count(*) FROM recordings WHERE status = 'ingested'") == [(len(GOOD),)]


def test_patch_bytes_helper_is_the_factory_one(tmp_path: Path, real: Real) -> None:
    """The field offsets used here agree with a pyedflib file: patching a label through edf_factory.patch_bytes
    at signal_field's offset is what read_header reads back."""
    path = tmp_path / "x.edf"
    path.write_bytes(real.edf)
    offset, width = signal_field(real.ns, "label", 2)
    patch_bytes(path, offset, b"EEG XYZ-REF".ljust(width))
    header = read_header(path)
    assert header.labels[2] == "EEG XYZ-REF"
    assert header.samples_per_record[0] == int(real.edf[signal_field(real.ns, "samples_per_record", 0)[0]:][:8])
