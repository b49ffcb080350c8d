"""``compute``: float32-fft (the default of a new pipeline) against float64 (every release before the field).

- float64 is today's algorithm bit for bit against the code as it was (kept verbatim below, hypothesis), and against
  the signals a release before the field stored (tests/fixtures/cache_0004.tar.gz) to 1 ulp of float32 (other builds);
- float32-fft equals float64 within the stated tolerance (``FLOAT32_FFT_ATOL`` x std + ``FLOAT32_FFT_RTOL`` x peak
  per channel, everywhere: ends included), on real EDF files written by pyedflib at 250/256/400/512 Hz and on
  generated signals over the spec's settings (hypothesis); labels and windows are identical;
- a cache built before the field keeps float64 after the upgrade: not refused, nothing rebuilt, by the CLI with or
  without flags or a recipe and by the library; ``--compute float32-fft`` is refused until ``--replace`` or
  ``--pipeline OTHER``.
"""

from __future__ import annotations

import json
import sqlite3
import tarfile
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from edf_factory import Channel, query, run_cli, write_csv_bi, write_edf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eegcache.ops.ingest import ingest
from eegcache.pipeline import keys
from eegcache.pipeline.names import PipelineError
from eegcache.pipeline.preprocess import FLOAT32_FFT_ATOL, FLOAT32_FFT_RTOL, preprocess, resample, zero_phase
from eegcache.pipeline.spec import IngestConfig, PreprocessSpec
from eegcache.sources.edf import read_recording
from eegcache.store import LocalObjectStore

FIXTURES = Path(__file__).parent / "fixtures"
TUH = ("FP1", "F3", "C3", "P3", "O1", "F7", "T3", "T5", "FZ", "CZ", "PZ",
       "FP2", "F4", "C4", "P4", "O2", "F8", "T4", "T6")  # fmt: skip


# --- the float64 code as every release before `compute` wrote it (commit 8673425), verbatim -------------------
# (but for ``resample``, which this change left as it was; the fixture test below pins it to an old release's output)


def _reference_zscore(x):
    mean = x.mean(axis=-1, keepdims=True)
    std = x.std(axis=-1, keepdims=True)
    return np.where(std > 0, (x - mean) / np.where(std > 0, std, 1.0), 0.0)


def reference_preprocess(data, fs_in, spec):
    from scipy import signal as sps

    x = np.asarray(data, dtype=np.float64)
    if spec.chain == "zscore-first":
        x = _reference_zscore(x)
    x = resample(x, fs_in, spec.fs, spec.resample)
    padlen_ok = x.shape[-1] > 3 * 27
    if spec.bandpass_hz is not None and padlen_ok:
        low, high = spec.bandpass_hz
        if low > 0:
            sos = sps.butter(4, [low, high], btype="bandpass", fs=spec.fs, output="sos")
        else:
            sos = sps.butter(4, high, btype="lowpass", fs=spec.fs, output="sos")
        x = sps.sosfiltfilt(sos, x, axis=-1)
    for f0 in (*spec.notch_hz, *spec.fixed_notch_hz):
        if padlen_ok:
            b, a = sps.iirnotch(f0, Q=30.0, fs=spec.fs)
            x = sps.filtfilt(b, a, x, axis=-1)
    if spec.zscore and spec.chain == "filter-first":
        x = _reference_zscore(x)
    return x.astype(spec.dtype)


# --- the tolerance ------------------------------------------------------------------------------------------------


def assert_within_tolerance(fast: np.ndarray, exact: np.ndarray, what: str = "") -> float:
    """Per channel |fast - exact| <= ATOL * std + RTOL * peak of the float64 output; returns the worst |diff|."""
    assert fast.shape == exact.shape and fast.dtype == exact.dtype, (what, fast.shape, exact.shape)
    fast, exact = fast.astype(np.float64), exact.astype(np.float64)
    diff = np.abs(fast - exact)
    bound = (FLOAT32_FFT_ATOL * exact.std(axis=-1, keepdims=True)
             + FLOAT32_FFT_RTOL * np.abs(exact).max(axis=-1, keepdims=True, initial=0.0))
    worst = np.unravel_index(np.argmax(diff - bound), diff.shape)
    assert (diff <= bound).all(), f"{what}: |diff| {diff[worst]:.3g} > {bound[worst[:-1]][0]:.3g} at {worst}"
    return float(diff.max(initial=0.0))


# --- generated signals and specs (hypothesis) --------------------------------------------------------------------

RATES_IN = (128.0, 200.0, 250.0, 256.0, 400.0, 500.0, 512.0)


@st.composite
def specs(draw, compute: str = "float32-fft") -> PreprocessSpec:
    fs = draw(st.sampled_from([128.0, 200.0, 250.0, 256.0, 512.0]))
    bandpass = draw(st.sampled_from([None, (0.5, 120.0), (0.0, 40.0), (1.0, 30.0), (0.1, 50.0)]))
    if bandpass is not None and bandpass[1] >= fs / 2:
        bandpass = (bandpass[0], fs / 2 - 10.0)
    notches = tuple(draw(st.lists(st.sampled_from([50.0, 60.0, 100.0]).filter(lambda f: f < fs / 2), max_size=2,
                                  unique=True)))
    zscore = draw(st.booleans())
    return PreprocessSpec(fs=fs, bandpass_hz=bandpass, notch_hz=notches, zscore=zscore,
                          chain=draw(st.sampled_from(["filter-first", "zscore-first"] if zscore else ["filter-first"])),
                          resample=draw(st.sampled_from(["poly", "fft"])),
                          fixed_notch_hz=draw(st.sampled_from([(), (1.0,)])), compute=compute)


@st.composite
def signals(draw) -> tuple[np.ndarray, float]:
    """Channels of noise (any level), a DC offset up to 2,000 µV, a step of up to 20x the noise, a tone in the band
    and a slow drift of up to 10x the noise (below the ~30x the tolerance covers); sometimes a zero-filled channel;
    from a few samples (shorter than any filter) to 150 s (float64 ends and the FFT middle)."""
    fs = draw(st.sampled_from(RATES_IN))
    n = max(1, int(draw(st.floats(0.02, 150.0)) * fs))
    channels = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    sigma = rng.uniform(0.5, 50.0, (channels, 1))
    t = np.arange(n) / fs
    x = sigma * rng.standard_normal((channels, n)) + rng.uniform(-2000.0, 2000.0, (channels, 1))
    x += sigma * rng.uniform(-20.0, 20.0, (channels, 1)) * (t >= rng.uniform(0, t[-1] + 1e-9))[None]
    x += sigma * rng.uniform(0.0, 5.0, (channels, 1)) * np.sin(2 * np.pi * rng.uniform(1.0, 40.0) * t)[None]
    x += sigma * rng.uniform(0.0, 10.0, (channels, 1)) * np.sin(2 * np.pi * 0.1 * t + rng.uniform(0, 6.3))[None]
    if channels > 1 and draw(st.booleans()):
        x[0] = 0.0
    return x, fs


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(signals(), specs(compute="float64"))
def test_float64_is_the_code_of_every_earlier_release(signal, spec: PreprocessSpec) -> None:
    """compute = float64 (a stored spec without the field) is the earlier code's output, bit for bit."""
    x, fs = signal
    assert np.array_equal(preprocess(x, fs, spec), reference_preprocess(x, fs, spec))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(signals(), specs())
def test_float32_fft_is_float64_within_the_tolerance(signal, spec: PreprocessSpec) -> None:
    x, fs = signal
    exact = preprocess(x, fs, PreprocessSpec.from_dict({**spec.to_dict(), "compute": "float64"}))
    fast = preprocess(x, fs, spec)
    assert_within_tolerance(fast, exact, f"{fs:g} Hz -> {spec}")
    if x.shape[0] > 1 and not x[0].any():
        assert not fast[0].any() and not exact[0].any()  # a zero-filled channel stays zero


def test_the_kernel_is_the_filters_squared_magnitude_response() -> None:
    """The zero-phase kernel's spectrum is |H|² of the cascaded band-pass and notch (what filtering forwards and
    backwards does away from the ends), within the kernel's cut, and the float64 ends are longer than the kernel."""
    from scipy import signal as sps

    zp = zero_phase(256.0, (0.5, 120.0), (60.0,))
    n = 1 << 16
    wrapped = np.zeros(n)
    wrapped[: zp.half + 1] = zp.kernel[zp.half:]
    wrapped[n - zp.half:] = zp.kernel[: zp.half]
    spectrum = np.fft.rfft(wrapped)
    sos = np.vstack([sps.butter(4, [0.5, 120.0], btype="bandpass", fs=256.0, output="sos"),
                     sps.tf2sos(*sps.iirnotch(60.0, Q=30.0, fs=256.0))])
    _, h = sps.sosfreqz(sos, worN=np.fft.rfftfreq(n, 1 / 256.0), fs=256.0)
    assert np.abs(spectrum.imag).max() < 1e-6  # symmetric: zero phase
    assert np.abs(spectrum.real - np.abs(h) ** 2).max() < 1e-5
    assert zp.dc_gain == 0.0 and zp.ends >= zp.half and zp.edge > 2 * zp.ends - 64 and 5 * 256 < zp.half < 20 * 256


def test_filters_slower_than_the_recording_make_no_kernel() -> None:
    """A band-pass from 1e-5 Hz (valid; its transient lasts days): float32-fft filters all of it in float64, as
    float64 does, instead of making a kernel longer than the recording."""
    x = np.random.default_rng(0).normal(0.0, 20.0, (2, 256 * 120)) + 300.0
    zero_phase.cache_clear()
    fast = preprocess(x, 256.0, PreprocessSpec(bandpass_hz=(1e-5, 100.0)))
    assert zero_phase.cache_info().currsize == 0
    exact = preprocess(x, 256.0, PreprocessSpec(bandpass_hz=(1e-5, 100.0), compute="float64"))
    assert_within_tolerance(fast, exact)


# --- real EDF files ----------------------------------------------------------------------------------------------


def eeg_like(fs: int, seconds: float, seed: int) -> list[Channel]:
    """19 TUH electrodes (``EEG FP1-REF``...): brown-ish noise of ~10-30 µV, posterior alpha, 60 Hz line noise,
    a DC offset of up to ±400 µV, and a movement artefact of ~300 µV in one channel."""
    from scipy import signal as sps

    rng = np.random.default_rng(seed)
    n = int(fs * seconds)
    t = np.arange(n) / fs
    out = []
    for i, name in enumerate(TUH):
        x = sps.lfilter([1.0], [1.0, -0.97], rng.normal(0, 3.0, n)) + rng.uniform(-400, 400)
        x += (8.0 if name in ("O1", "O2", "P3", "P4") else 2.0) * np.sin(2 * np.pi * 10.0 * t + i)
        x += 3.0 * np.sin(2 * np.pi * 60.0 * t)
        if i == 5:
            x[n // 3: n // 3 + fs] += 300.0 * np.hanning(fs)
        out.append(Channel(f"EEG {name}-REF", fs, x))
    return out


RECORDINGS = [(fs, seconds) for fs in (250, 256, 400, 512) for seconds in (40, 200)]


def write_recordings(root: Path) -> dict[str, tuple[Path, tuple[tuple[float, float], ...]]]:
    """A folder of EDFs (pyedflib), one per rate and length, each with a csv_bi of one seizure."""
    made = {}
    for k, (fs, seconds) in enumerate(RECORDINGS):
        edf = root / f"r{k}_{fs}hz_{seconds}s.edf"
        edf.parent.mkdir(parents=True, exist_ok=True)
        write_edf(edf, eeg_like(fs, seconds, seed=k), start=datetime(2004, 1, 1, 9, 0, 0))
        events = ((round(seconds * 0.25, 4), round(seconds * 0.6, 4)),)
        write_csv_bi(edf.with_suffix(".csv_bi"), events, seconds)
        made[edf.stem] = (edf, events)
    return made


def test_float32_fft_on_real_edf_files_at_every_rate(tmp_path: Path) -> None:
    """The stored signal of EDFs written by pyedflib (250, 256, 400, 512 Hz; 40 s: float64 filters throughout, 200 s:
    float64 ends and the FFT middle), read by eegcache: float32-fft within the tolerance of float64."""
    spec = PreprocessSpec()
    worst = 0.0
    for edf, _events in write_recordings(tmp_path).values():
        raw = read_recording(edf, spec.channels)
        exact = preprocess(raw.data, raw.fs, PreprocessSpec(compute="float64"))
        worst = max(worst, assert_within_tolerance(preprocess(raw.data, raw.fs, spec), exact, edf.name))
    assert worst > 0  # they are computed differently


def test_two_pipelines_store_the_same_windows_and_labels_within_the_tolerance(tmp_path: Path) -> None:
    """One tree ingested as a float64 pipeline and a float32-fft one beside it: different keys, the same samples,
    label masks, events and window rows (start, label, seizure fraction), signals within the tolerance."""
    made = write_recordings(tmp_path / "src")
    cache = tmp_path / "cache"
    for name, compute in (("f64", "float64"), ("fast", "float32-fft")):
        summary = ingest(tmp_path / "src", cache, IngestConfig(spec=PreprocessSpec(compute=compute), pipeline=name,
                                                              stride_s=20.0), progress=False)
        assert (summary.ingested, summary.failed) == (len(made), 0), summary.failures
    rows = query(cache, "SELECT r.name, p.name, r.object_key FROM recordings r JOIN pipelines p "
                        "ON p.id = r.pipeline_id ORDER BY r.name, p.name")
    by_name: dict[str, dict[str, str]] = {}
    for rec, pipeline, key in rows:
        by_name.setdefault(rec, {})[pipeline] = key
    assert set(by_name) == set(made)
    store = LocalObjectStore(cache)
    for rec, objects in by_name.items():
        assert objects["f64"] != objects["fast"]
        a, b = store.open(objects["f64"]), store.open(objects["fast"])
        assert a["signal"].shape == b["signal"].shape and a["signal"].dtype == b["signal"].dtype == np.float32
        assert np.array_equal(a["labels"][:], b["labels"][:]) and a["labels"][:].any()
        assert_within_tolerance(np.asarray(b["signal"][:]), np.asarray(a["signal"][:]), rec)
    sql = ("SELECT recording, window_s, stride_s, start_s, label, seizure_fraction FROM window_labels "
           "WHERE pipeline = ? ORDER BY recording, stride_s, start_s")
    f64, fast = query(cache, sql, ("f64",)), query(cache, sql, ("fast",))
    assert f64 == fast and {r[4] for r in f64} == {"no_seizure", "partial_seizure", "full_seizure"}
    events = "SELECT recording, start_s, stop_s FROM seizure_events WHERE pipeline = ? ORDER BY recording, start_s"
    assert query(cache, events, ("f64",)) == query(cache, events, ("fast",)) != []
    assert [r[0] for r in query(cache, "SELECT spec_json FROM pipelines WHERE name = 'fast'")][0].count(
        '"compute":"float32-fft"') == 1
    assert '"compute"' not in query(cache, "SELECT spec_json FROM pipelines WHERE name = 'f64'")[0][0]


# --- a cache built before the field ------------------------------------------------------------------------------


@pytest.fixture
def old_cache(tmp_path: Path) -> tuple[Path, Path]:
    """tests/fixtures/cache_0004.tar.gz: built by the release before issue 11 (float64, no `compute` anywhere), with
    its tree (4 recordings at 250 Hz, two window sets), upgraded to today's index schema."""
    with tarfile.open(FIXTURES / "cache_0004.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    cache, tree = tmp_path / "cache", tmp_path / "tusz"
    done = run_cli("db", "upgrade", "--cache", cache)
    assert done.returncode == 0, done.stderr
    return cache, tree


def _float32_ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in float32 units in the last place, per sample (same-sign values, as z-scored EEG near each other)."""
    return np.abs(a.astype(np.float32).view(np.int32).astype(np.int64) - b.astype(np.float32).view(np.int32))


def test_a_stored_spec_without_compute_rebuilds_its_stored_signals(old_cache) -> None:
    """The spec a release before the field stored reads back as float64, whose output is that release's stored
    signal: bit for bit but for float32 rounding ties that another numpy/scipy build's float64 arithmetic tips the
    other way (at most 1 unit in the last place, a few samples in 10^5: scipy 1.17 / numpy 2.4 against the
    fixture's builds); float32-fft of the same EDF is within the tolerance of it."""
    cache, tree = old_cache
    store = LocalObjectStore(cache)
    rows = query(cache, "SELECT r.rel_path, o.key, o.spec_json FROM recordings r JOIN objects o ON o.key = "
                        "r.object_key WHERE r.status = 'ingested'")
    assert len(rows) == 4
    for rel, key, spec_json in rows:
        assert '"compute"' not in spec_json
        spec = PreprocessSpec.from_dict(json.loads(spec_json))
        assert spec.compute == "float64" and spec.canonical_json() == spec_json
        raw = read_recording(tree / rel, spec.channels, spec.missing_electrodes, spec.montage)
        stored = np.asarray(store.open(key)["signal"][:])
        rebuilt = preprocess(raw.data, raw.fs, spec)
        assert rebuilt.shape == stored.shape and rebuilt.dtype == stored.dtype, rel
        ulps = _float32_ulps(rebuilt, stored)
        assert ulps.max() <= 1 and np.count_nonzero(ulps) <= 1e-4 * ulps.size, (rel, ulps.max(), np.count_nonzero(ulps))
        fast = preprocess(raw.data, raw.fs, PreprocessSpec.from_settings(json.loads(spec_json)))
        assert_within_tolerance(fast, stored, rel)


def _state(cache: Path) -> tuple:
    with sqlite3.connect(cache / "index.sqlite") as con:
        return (con.execute("SELECT name, spec_json, spec_digest FROM pipelines ORDER BY name").fetchall(),
                con.execute("SELECT name, object_key, spec_digest FROM recordings ORDER BY name").fetchall(),
                con.execute("SELECT key, spec_json FROM objects ORDER BY key").fetchall(),
                con.execute("SELECT id, recording_id, window_set_id, start_sample, label FROM windows ORDER BY id")
                .fetchall())


def test_an_old_cache_keeps_float64_after_the_upgrade(old_cache) -> None:
    """Re-ingesting the tree of a cache built before ``compute`` existed: by the CLI with its flags, with a new
    stride, with ``--recipe default``, and by the library with the default spec: nothing refused, read or rebuilt,
    the pipeline's spec and every key as they were. Asking for float32-fft is refused, naming the field, until
    ``--pipeline OTHER`` (built beside it, the same windows) or ``--replace``."""
    cache, tree = old_cache
    before = _state(cache)
    old_digest = before[0][0][2]

    def cli_ingest(*flags: object) -> dict:
        done = run_cli("ingest", tree, "--cache", cache, "--json", "--quiet", "--missing-electrodes", "zero", *flags)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout)

    summary = cli_ingest()
    assert (summary["edf_read"], summary["ingested"], summary["failed"]) == (0, 0, 0)
    assert _state(cache) == before
    summary = cli_ingest("--recipe", "default")
    assert (summary["edf_read"], summary["ingested"], summary["failed"]) == (0, 0, 0)
    assert _state(cache) == before
    summary = cli_ingest("--stride", 30)
    assert summary["edf_read"] == 0 and summary["windows_added"] > 0  # from the stored masks
    after_stride = _state(cache)
    assert after_stride[:3] == before[:3]
    library = ingest(tree, cache, IngestConfig(spec=PreprocessSpec(missing_electrodes="zero")), progress=False)
    assert (library.edf_read, library.ingested, library.failed, library.unchanged) == (0, 0, 0, 4)
    assert _state(cache) == after_stride
    assert query(cache, "SELECT spec_digest FROM pipelines WHERE name = 'default'") == [(old_digest,)]

    refused = run_cli("ingest", tree, "--cache", cache, "--quiet", "--missing-electrodes", "zero",
                      "--compute", "float32-fft")
    assert refused.returncode == 1 and "compute 'float64' -> 'float32-fft'" in refused.stderr, refused.stderr
    with pytest.raises(PipelineError, match="compute 'float64' -> 'float32-fft'"):
        ingest(tree, cache, IngestConfig(spec=PreprocessSpec(missing_electrodes="zero"), explicit=frozenset(
            {"missing_electrodes", "compute"})), progress=False)
    assert _state(cache) == after_stride

    beside = cli_ingest("--compute", "float32-fft", "--pipeline", "fast")
    assert beside["edf_read"] == 4 and beside["ingested"] == 4
    sql = ("SELECT recording, window_s, stride_s, start_s, label, seizure_fraction FROM window_labels "
           "WHERE pipeline = ? ORDER BY recording, start_s")
    assert query(cache, sql, ("fast",)) == [r for r in query(cache, sql, ("default",)) if r[2] == 60.0]
    fast_spec = PreprocessSpec.from_dict(json.loads(query(cache, "SELECT spec_json FROM pipelines WHERE name = "
                                                                 "'fast'")[0][0]))
    assert fast_spec.compute == "float32-fft" and keys.spec_digest(fast_spec) != old_digest

    cli_ingest("--compute", "float32-fft", "--replace")
    spec_json = query(cache, "SELECT spec_json FROM pipelines WHERE name = 'default'")[0][0]
    assert PreprocessSpec.from_dict(json.loads(spec_json)) == fast_spec
    keys_of = ("SELECT r.name, r.object_key FROM recordings r JOIN pipelines p ON p.id = r.pipeline_id "
               "WHERE p.name = ? ORDER BY r.name")
    assert query(cache, keys_of, ("default",)) == query(cache, keys_of, ("fast",))  # rebuilt: the float32-fft objects
