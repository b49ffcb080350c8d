"""Ingest integration: real EDF trees in, real Zarr objects and a real SQLite index out.

Every expectation is computed here from the events and signals the test wrote (``edf_factory``), never taken
from the library: labels by the literal rule ``start <= i/256 < stop``, windows by the full-length rule, channel
identity by the frequency each electrode was given.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyedflib
import pytest
import zarr
from conftest import (
    BAD_DATE,
    DUPLICATE_STEM,
    INGESTED,
    IS_ROOT,
    MISSING,
    NO_A1A2,
    OVERLAP,
    SHORT,
    STANDARD_TREE,
    SYNONYMS_CSV,
    TSE_512,
    Standard,
)
from edf_factory import (
    ELECTRODE_HZ,
    FS,
    SZCORE,
    Channel,
    Rec,
    cli,
    dominant_hz,
    expected_mask,
    expected_windows,
    index_snapshot,
    n_windows,
    object_dirs,
    object_files_on_disk,
    query,
    rec_channels,
    run_cli,
    table_dump,
    write_csv,
    write_csv_bi,
    write_edf,
    write_rec,
)

import eegcache.ops.prepare
import eegcache.pipeline.keys
import eegcache.pipeline.preprocess
import eegcache.sources.edf
from eegcache.ops.ingest import ingest
from eegcache.pipeline.spec import IngestConfig, PreprocessSpec
from eegcache.sources.annotations import parse_annotation

LABELS = ("no_seizure", "partial_seizure", "full_seizure")


def _object_group(cache: Path, stem: str) -> zarr.Group:
    (key,) = query(cache, "SELECT object_key FROM recordings WHERE name = ?", (stem,))[0]
    return zarr.open_group(str(cache / "objects" / key[:2] / key), mode="r")


def _windows_of(cache: Path, stem: str, window_s: float = 60.0, stride_s: float = 60.0) -> list[tuple]:
    return query(cache, "SELECT start_s, label, seizure_fraction FROM window_labels WHERE recording = ? "
                        "AND window_s = ? AND stride_s = ? ORDER BY start_s", (stem, window_s, stride_s))


# --- the standard tree, ingested once ---------------------------------------------------------------------


def test_summary_and_statuses(standard: Standard) -> None:
    """Six recordings ingested, the one lacking Fz/Pz failed, the byte-identical copy skipped; the summary's
    window counts are the index's."""
    s = standard.summary
    assert (s.ingested, s.failed, s.skipped, s.edf_read) == (6, 1, 1, 6)
    status = dict(query(standard.cache, "SELECT recording, status FROM recording_status"))
    expected = {rec.stem: "ingested" for rec in INGESTED} | {MISSING.stem: "failed", DUPLICATE_STEM: "skipped"}
    assert status == expected
    counts = dict(query(standard.cache, "SELECT label, count(*) FROM window_labels GROUP BY label"))
    assert s.window_counts == {label: counts.get(label, 0) for label in LABELS}


def test_path_metadata_parsed(standard: Standard) -> None:
    """split, subject, session, montage and token come from the TUSZ path (old-style session folder too)."""
    rows = query(standard.cache, "SELECT name, split, subject, session, montage, token FROM recordings")
    got = {r[0]: r[1:] for r in rows}
    for rec in STANDARD_TREE:
        assert got[rec.stem] == (rec.split, rec.patient, rec.session_name, rec.montage, f"t{rec.token:03d}")
    assert got[SYNONYMS_CSV.stem][2] == "s002_2003_07_21"
    views = query(standard.cache, "SELECT DISTINCT recording, split, subject, session, montage FROM window_labels")
    for name, split, subject, session, montage in views:
        assert (split, subject, session, montage) == got[name][:4]


@pytest.mark.parametrize("rec", INGESTED, ids=lambda r: f"{r.montage}-{r.fs}Hz-{r.annotation}")
def test_window_labels_follow_the_rule(standard: Standard, rec: Rec) -> None:
    """Every window of every montage/rate/annotation format: full length, from 0, every stride, labelled by
    the fraction of samples i with start <= i/256 < stop (overlaps merged, events past the end clipped)."""
    mask = expected_mask(rec.events, rec.n_samples)
    want = expected_windows(mask, 60, 60)
    got = _windows_of(standard.cache, rec.stem)
    assert len(got) == n_windows(rec.n_samples, 60, 60) == len(want)
    for (start, label, frac), (w_start, w_label, w_frac) in zip(got, want, strict=True):
        assert (start, label) == (w_start, w_label)
        assert frac == pytest.approx(w_frac, abs=1e-12)
    durations = query(standard.cache, "SELECT DISTINCT duration_s FROM window_labels WHERE recording = ?", (rec.stem,))
    assert durations == ([(60.0,)] if got else [])


def test_window_labels_cover_all_classes(standard: Standard) -> None:
    """The tree was built so that each label occurs; a boundary-straddling 1-sample seizure counts as partial."""
    labels = {r[0] for r in query(standard.cache, "SELECT DISTINCT label FROM window_labels")}
    assert labels == set(LABELS)
    (frac,) = query(standard.cache, "SELECT seizure_fraction FROM window_labels WHERE recording = ? AND start_s = 60",
                    (TSE_512.stem,))[0]
    assert frac == 1 / (60 * FS)  # 59.9961-60.0039 s holds exactly one sample at 256 Hz: i = 15360


@pytest.mark.parametrize("rec", INGESTED, ids=lambda r: r.stem)
def test_stored_mask_and_signal(standard: Standard, rec: Rec) -> None:
    """The object holds the 256 Hz mask by the rule and 19 channels in the spec order: each stored channel's
    dominant frequency is the one written on that electrode (decoy C3P ignored, T7/T8/P7/P8 mapped)."""
    group = _object_group(standard.cache, rec.stem)
    labels = np.asarray(group["labels"][...])
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels.astype(bool), expected_mask(rec.events, rec.n_samples))
    signal = np.asarray(group["signal"][...])
    assert signal.shape == (19, rec.n_samples)
    assert signal.dtype == np.float32
    for i, electrode in enumerate(SZCORE):
        assert dominant_hz(signal[i]) == pytest.approx(ELECTRODE_HZ[electrode], abs=0.2), electrode
        assert abs(float(signal[i].mean())) < 1e-3 and float(signal[i].std()) == pytest.approx(1.0, abs=1e-3)


def test_short_recording_has_no_windows(standard: Standard) -> None:
    """A 30 s file is ingested (its mask is stored) but yields no 60 s window."""
    assert query(standard.cache, "SELECT status, reason, n_windows FROM recording_status WHERE recording = ?",
                 (SHORT.stem,)) == [("ingested", None, 0)]
    group = _object_group(standard.cache, SHORT.stem)
    assert group["labels"].shape == (SHORT.n_samples,)


def test_missing_electrodes_fail_naming_them(standard: Standard) -> None:
    """Fz and Pz absent: failed, the reason names both and the opt-in, and nothing of it is indexed."""
    ((status, reason, n),) = query(standard.cache, "SELECT status, reason, n_windows FROM recording_status "
                                                   "WHERE recording = ?", (MISSING.stem,))
    assert (status, n) == ("failed", 0)
    assert MISSING.stem in reason and "Fz" in reason and "Pz" in reason and "--missing-electrodes zero" in reason
    assert query(standard.cache, "SELECT object_key FROM recordings WHERE name = ?", (MISSING.stem,)) == [(None,)]


def test_bad_start_date_read_with_mne(standard: Standard) -> None:
    """pyedflib refuses the start date 01:01:85; the file is read through MNE, recorded as such, and its
    channels are still the right electrodes."""
    with pytest.raises(OSError, match="startdate"):
        pyedflib.EdfReader(str(standard.edfs[BAD_DATE])).close()
    readers = dict(query(standard.cache, "SELECT name, reader FROM recordings WHERE status = 'ingested'"))
    assert readers == {rec.stem: ("mne" if rec is BAD_DATE else "pyedflib") for rec in INGESTED}


def test_identical_bytes_stored_once(standard: Standard) -> None:
    """A byte-identical EDF+annotation at a second path: one object folder, the copy skipped with a reason
    naming the first path, and no second set of windows."""
    rows = dict(query(standard.cache, "SELECT name, object_key FROM recordings WHERE object_key IS NOT NULL"))
    assert rows[DUPLICATE_STEM] == rows[NO_A1A2.stem]
    assert object_dirs(standard.cache) == {rows[rec.stem] for rec in INGESTED}
    assert len(object_dirs(standard.cache)) == len(INGESTED)
    ((reason, n),) = query(standard.cache, "SELECT reason, n_windows FROM recording_status WHERE recording = ?",
                           (DUPLICATE_STEM,))
    rel = standard.edfs[NO_A1A2].relative_to(standard.root)
    assert reason.startswith(f"same EDF and annotation bytes as {standard.root.name}/{rel};") and n == 0


def test_clipped_events_warned_and_overlaps_merged(standard: Standard) -> None:
    """290-310 s in a 300 s file is clipped with a warning recorded on the recording; 100-130 and 125-140 s
    are one event."""
    ((warnings,),) = query(standard.cache, "SELECT warnings FROM recordings WHERE name = ?", (OVERLAP.stem,))
    messages = json.loads(warnings)
    assert any("290" in m and "310" in m and "clipped" in m for m in messages), messages
    events = query(standard.cache, "SELECT e.start_s, e.stop_s FROM events e JOIN recordings r ON r.id = e.recording_id "
                                   "WHERE r.name = ? ORDER BY e.start_s", (OVERLAP.stem,))
    assert events == [(0.0, 12.5), (100.0, 140.0), (290.0, 300.0)]
    (seizure_s,) = query(standard.cache, "SELECT seizure_s FROM recordings WHERE name = ?", (OVERLAP.stem,))[0]
    assert seizure_s == pytest.approx(12.5 + 40 + 10)
    assert query(standard.cache, "SELECT warnings FROM recordings WHERE name = ?", (SYNONYMS_CSV.stem,)) == [(None,)]


# --- re-ingest and new window sets (on copies) --------------------------------------------------------------


class _Spy:
    """Wraps library functions to record which files they were called on. The EDF readers parse a private copy
    of the source (hashed while it is made: eegcache.ops.prepare._private_copy); making it counts as reading the source."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.edfs: list[str] = []
        self.preprocessed = 0
        edf, keys = eegcache.sources.edf, eegcache.pipeline.keys
        real_read, real_header, real_digest = edf.read_recording, edf.read_header, keys.file_digest
        real_pre = eegcache.pipeline.preprocess.preprocess

        real_copy = eegcache.ops.prepare._private_copy

        def source(path) -> None:
            if "eegcache-read-" not in str(path):  # the copy of a source already recorded
                self.edfs.append(str(path))

        def read_recording(path, *a, **k):
            source(path)
            return real_read(path, *a, **k)

        def read_header(path, *a, **k):
            source(path)
            return real_header(path, *a, **k)

        def private_copy(path):
            self.edfs.append(str(path))
            return real_copy(path)

        def file_digest(path):
            if str(path).endswith(".edf"):
                self.edfs.append(str(path))
            return real_digest(path)

        def preprocess(*a, **k):
            self.preprocessed += 1
            return real_pre(*a, **k)

        for module in (eegcache.sources.edf, eegcache.ops.prepare):
            monkeypatch.setattr(module, "read_recording", read_recording)
            monkeypatch.setattr(module, "read_header", read_header)
        monkeypatch.setattr(eegcache.pipeline.keys, "file_digest", file_digest)
        monkeypatch.setattr(eegcache.ops.prepare, "_private_copy", private_copy)
        monkeypatch.setattr(eegcache.pipeline.preprocess, "preprocess", preprocess)


def test_reingest_unchanged_tree_changes_nothing(standard: Standard, cache_copy: Path, monkeypatch) -> None:
    """Second run over the same tree: nothing preprocessed, no good EDF opened, no row changed (the failed file
    is retried and fails again, only its updated_at moves)."""
    before = table_dump(cache_copy)
    spy = _Spy(monkeypatch)
    summary = ingest(standard.root, cache_copy, IngestConfig(), progress=False)
    assert (summary.ingested, summary.edf_read, summary.unchanged, summary.failed) == (0, 0, 7, 1)
    assert spy.preprocessed == 0
    assert set(spy.edfs) <= {str(standard.edfs[MISSING])}
    after = table_dump(cache_copy)
    columns = [c[1] for c in query(cache_copy, "PRAGMA table_info(recordings)")]
    ts, status = columns.index("updated_at"), columns.index("status")

    def without_failed_ts(rows):
        return [r[:ts] + r[ts + 1 :] if r[status] == "failed" else r for r in rows]

    assert {k: v for k, v in after.items() if k != "recordings"} == {k: v for k, v in before.items() if k != "recordings"}
    assert without_failed_ts(after["recordings"]) == without_failed_ts(before["recordings"])


def test_new_stride_from_stored_masks(standard: Standard, cache_copy: Path, monkeypatch) -> None:
    """--stride 10 adds a window set for every stored recording without opening any good EDF or preprocessing;
    the objects do not grow; windows follow the rule; the 60 s set is untouched."""
    files_before = object_files_on_disk(cache_copy)
    nbytes_before = query(cache_copy, "SELECT key, nbytes, digest FROM objects ORDER BY key")
    windows_60 = query(cache_copy, "SELECT * FROM window_labels ORDER BY window_id")
    spy = _Spy(monkeypatch)
    summary = ingest(standard.root, cache_copy, IngestConfig(stride_s=10.0), progress=False)
    assert (summary.ingested, summary.edf_read) == (0, 0)
    assert spy.preprocessed == 0
    assert set(spy.edfs) <= {str(standard.edfs[MISSING])}
    assert summary.windows_added == len(INGESTED) - 1  # the 30 s file has no window of either set
    assert object_files_on_disk(cache_copy) == files_before
    assert query(cache_copy, "SELECT key, nbytes, digest FROM objects ORDER BY key") == nbytes_before
    assert query(cache_copy, "SELECT * FROM window_labels WHERE stride_s = 60 ORDER BY window_id") == windows_60
    for rec in INGESTED:
        got = _windows_of(cache_copy, rec.stem, 60, 10)
        want = expected_windows(expected_mask(rec.events, rec.n_samples), 60, 10)
        assert [(s, lab) for s, lab, _ in got] == [(s, lab) for s, lab, _ in want]
        assert [f for *_, f in got] == pytest.approx([f for *_, f in want], abs=1e-12)


def test_window_counts_of_two_strides_follow_the_formula(standard: Standard, cache_copy: Path) -> None:
    """Per recording, windows = floor((n - W) / S) + 1 (0 when n < W) for stride 60 and stride 10."""
    ingest(standard.root, cache_copy, IngestConfig(stride_s=10.0), progress=False)
    rows = query(cache_copy, "SELECT recording, stride_s, count(*) FROM window_labels GROUP BY recording, stride_s")
    got = {(r, s): n for r, s, n in rows}
    for rec in INGESTED:
        for stride in (60.0, 10.0):
            assert got.get((rec.stem, stride), 0) == n_windows(rec.n_samples, 60, stride)
    total = {r: n for r, n in query(cache_copy, "SELECT recording, n_windows FROM recording_status")}
    for rec in INGESTED:
        assert total[rec.stem] == n_windows(rec.n_samples, 60, 60) + n_windows(rec.n_samples, 60, 10)


def test_new_stride_via_cli_never_opens_the_edfs(tree, tmp_path: Path) -> None:
    """Through the CLI: after the EDF bytes are replaced by zeros (same size and mtime, so a read would fail)
    and, when not root, made unreadable, ``--stride 10`` still adds the window set and says no EDF was read."""
    recs = (OVERLAP, TSE_512)
    root, edfs = tree(*recs)
    cache = tmp_path / "cache"
    assert run_cli("ingest", root, "--cache", cache, "--quiet").returncode == 0
    for edf in edfs.values():
        st = edf.stat()
        edf.write_bytes(b"\0" * st.st_size)
        os.utime(edf, ns=(st.st_atime_ns, st.st_mtime_ns))
        if not IS_ROOT:
            edf.chmod(0)
    try:
        done = run_cli("ingest", root, "--cache", cache, "--quiet", "--stride", "10")
    finally:
        for edf in edfs.values():
            edf.chmod(0o644)
    assert done.returncode == 0, done.stderr
    assert "EDF files read: 0" in done.stdout and "no EDF was read or preprocessed" in done.stdout
    assert "new window set from stored masks 2" in done.stdout
    for rec in recs:
        assert len(_windows_of(cache, rec.stem, 60, 10)) == n_windows(rec.n_samples, 60, 10)


def test_missing_electrodes_zero_fill(tree, tmp_path: Path) -> None:
    """--missing-electrodes zero ingests the Fz/Pz-less file with zero channels at their places, records the
    fill per recording, and leaves complete files unfilled."""
    root, _ = tree(MISSING, SHORT)
    cache = tmp_path / "cache"
    done = cli("ingest", root, "--cache", cache, "--quiet", "--missing-electrodes", "zero")
    assert done.returncode == 0, done.stderr
    fills = dict(query(cache, "SELECT name, filled_channels FROM recordings"))
    assert json.loads(fills[MISSING.stem]) == ["Fz", "Pz"]
    assert fills[SHORT.stem] is None
    signal = np.asarray(_object_group(cache, MISSING.stem)["signal"][...])
    for i, electrode in enumerate(SZCORE):
        if electrode in ("FZ", "PZ"):
            assert not signal[i].any()
        else:
            assert dominant_hz(signal[i]) == pytest.approx(ELECTRODE_HZ[electrode], abs=0.2)
    assert query(cache, "SELECT n_windows FROM recording_status WHERE recording = ?", (MISSING.stem,)) == [(1,)]


def test_parallel_workers_give_the_serial_index(tree, tmp_path: Path) -> None:
    """--workers 2 (spawned processes, one writer) produces the same index as a serial run."""
    root, _ = tree(OVERLAP, TSE_512, MISSING)
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    assert cli("ingest", root, "--cache", serial, "--quiet").returncode == 1
    done = run_cli("ingest", root, "--cache", parallel, "--quiet", "--workers", "2")
    assert done.returncode == 1, done.stderr
    assert index_snapshot(parallel) == index_snapshot(serial)
    assert object_dirs(parallel) == object_dirs(serial)


def _ingest_then_relabel(tree, tmp_path: Path) -> tuple[Path, Path]:
    """Ingest SYNONYMS_CSV, then replace its annotation by a .csv_bi with one seizure at 0–30 s."""
    root, edfs = tree(SYNONYMS_CSV)
    cache = tmp_path / "cache"
    ingest(root, cache, IngestConfig(), progress=False)
    edf = edfs[SYNONYMS_CSV]
    edf.with_suffix(".csv").unlink()
    write_csv_bi(edf.with_suffix(".csv_bi"), [(0.0, 30.0)], SYNONYMS_CSV.duration_s)
    return root, cache


def test_changed_annotation_relabels(tree, tmp_path: Path) -> None:
    """Editing an annotation file changes that recording's labels on the next run; the old windows go."""
    root, cache = _ingest_then_relabel(tree, tmp_path)
    ingest(root, cache, IngestConfig(), progress=False)
    want = expected_windows(expected_mask([(0.0, 30.0)], SYNONYMS_CSV.n_samples), 60, 60)
    got = _windows_of(cache, SYNONYMS_CSV.stem)
    assert [(s, lab) for s, lab, _ in got] == [(s, lab) for s, lab, _ in want]


def test_relabel_reads_no_edf(tree, tmp_path: Path, monkeypatch) -> None:
    """Only the annotation changed: the stored signal is reused, the EDF is not preprocessed again."""
    root, cache = _ingest_then_relabel(tree, tmp_path)
    spy = _Spy(monkeypatch)
    summary = ingest(root, cache, IngestConfig(), progress=False)
    assert summary.edf_read == 0 and spy.preprocessed == 0


def test_same_edf_bytes_with_other_labels_preprocessed_once(tree, tmp_path: Path, monkeypatch) -> None:
    """The EDF bytes at a second path, with a different annotation: both recordings are ingested with their own
    labels, but the EDF is read and preprocessed once (the content key is EDF bytes + spec + pipeline)."""
    root, edfs = tree(SHORT)
    copy = edfs[SHORT].with_name("aaaaaaac_s002_t004.edf")
    shutil.copy2(edfs[SHORT], copy)
    write_csv_bi(copy.with_suffix(".csv_bi"), [(20.0, 25.0)], SHORT.duration_s)
    spy = _Spy(monkeypatch)
    summary = ingest(root, tmp_path / "cache", IngestConfig(), progress=False)
    statuses = dict(query(tmp_path / "cache", "SELECT recording, status FROM recording_status"))
    assert statuses == {SHORT.stem: "ingested", "aaaaaaac_s002_t004": "ingested"}
    for stem, events in ((SHORT.stem, SHORT.events), ("aaaaaaac_s002_t004", ((20.0, 25.0),))):
        labels = np.asarray(_object_group(tmp_path / "cache", stem)["labels"][...])
        np.testing.assert_array_equal(labels.astype(bool), expected_mask(events, SHORT.n_samples))
    assert (summary.edf_read, spy.preprocessed) == (1, 1)


def test_relative_and_absolute_src_are_the_same_recordings(tree, tmp_path: Path, monkeypatch) -> None:
    """`ingest src` from its parent folder, then `ingest /abs/src`: the same recordings, nothing new."""
    root, _ = tree(OVERLAP, SHORT)
    cache = tmp_path / "cache"
    monkeypatch.chdir(root.parent)
    assert cli("ingest", root.name, "--cache", cache, "--quiet").returncode == 0
    before = index_snapshot(cache)
    assert cli("ingest", root, "--cache", cache, "--quiet").returncode == 0
    assert index_snapshot(cache) == before
    assert all(Path(p).is_absolute() for _, p, *_ in before["status"])


def test_float16_option_is_a_different_object(tree, tmp_path: Path) -> None:
    """dtype is part of the key: float16 (a second pipeline) stores a second object of that type; the float32 one
    is untouched."""
    root, _ = tree(SHORT)
    cache = tmp_path / "cache"
    ingest(root, cache, IngestConfig(), progress=False)
    first = object_dirs(cache)
    summary = ingest(root, cache, IngestConfig(spec=PreprocessSpec(dtype="float16"), pipeline="half"), progress=False)
    assert summary.edf_read == 1
    (new,) = object_dirs(cache) - first
    assert zarr.open_group(str(cache / "objects" / new[:2] / new), mode="r")["signal"].dtype == np.float16
    assert query(cache, "SELECT dtype FROM objects WHERE key = ?", (new,)) == [("float16",)]


def test_factory_annotations_parse_to_their_events(tmp_path: Path) -> None:
    """The test inputs themselves: each annotation format written by edf_factory parses (with the library's
    parser) to the merged events it was written from."""
    for rec in (OVERLAP, SYNONYMS_CSV, TSE_512, NO_A1A2):
        edf = write_rec(tmp_path / rec.stem, rec)
        parsed = parse_annotation(edf.with_suffix(f".{rec.annotation}"))
        merged: list[list[float]] = []
        for a, b in sorted(rec.events):
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        assert parsed.events == tuple(tuple(e) for e in merged)


def test_csv_bi_is_preferred_over_csv(tree, tmp_path: Path) -> None:
    """With both beside the EDF (as in TUSZ), labels come from the .csv_bi TERM rows."""
    root, edfs = tree(SHORT)
    write_csv(edfs[SHORT].with_suffix(".csv"), {"FP1-F7": [(20.0, 29.0, "gnsz")]}, SHORT.duration_s)
    ingest(root, tmp_path / "cache", IngestConfig(), progress=False)
    labels = np.asarray(_object_group(tmp_path / "cache", SHORT.stem)["labels"][...])
    np.testing.assert_array_equal(labels.astype(bool), expected_mask(SHORT.events, SHORT.n_samples))


def test_a_single_edf_outside_the_tusz_layout(tmp_path: Path) -> None:
    """SRC may be one EDF file in any folder: it is ingested under its stem, with no TUSZ metadata."""
    folder = tmp_path / "plain"
    edf = write_edf(folder / "night1.edf", rec_channels(SHORT))
    write_csv_bi(folder / "night1.csv_bi", SHORT.events, SHORT.duration_s)
    write_edf(folder / "other.edf", rec_channels(SHORT))  # a sibling that must not be picked up
    summary = ingest(edf, tmp_path / "cache", IngestConfig(window_s=10.0, stride_s=10.0), progress=False)
    assert summary.ingested == 1
    rows = query(tmp_path / "cache", "SELECT DISTINCT recording, subject, session, split, montage FROM window_labels")
    assert rows == [("night1", None, None, None, None)]
    assert len(_windows_of(tmp_path / "cache", "night1", 10.0, 10.0)) == 3


def test_changed_edf_bytes_are_preprocessed_again(tree, tmp_path: Path) -> None:
    """An EDF rewritten with another signal gets a new object (new key) and its new samples; the old object is
    left unreferenced."""
    root, edfs = tree(SHORT)
    cache = tmp_path / "cache"
    ingest(root, cache, IngestConfig(), progress=False)
    old = query(cache, "SELECT object_key FROM recordings")[0][0]
    swapped = {"EEG FP1-REF": "EEG FP2-REF", "EEG FP2-REF": "EEG FP1-REF"}
    channels = [Channel(swapped.get(c.label, c.label), c.fs, c.samples) for c in rec_channels(SHORT)]
    write_edf(edfs[SHORT], channels)
    summary = ingest(root, cache, IngestConfig(), progress=False)
    assert summary.edf_read == 1
    new = query(cache, "SELECT object_key FROM recordings")[0][0]
    assert new != old and object_dirs(cache) == {old, new}
    signal = np.asarray(_object_group(cache, SHORT.stem)["signal"][...])
    assert dominant_hz(signal[SZCORE.index("FP1")]) == pytest.approx(ELECTRODE_HZ["FP2"], abs=0.2)


def test_an_unchanged_failed_file_is_not_read_again_unless_asked(tree, tmp_path: Path, monkeypatch) -> None:
    """A file that failed (missing Fz/Pz) and has not changed is not read on the next run (the summary counts and
    names it, exit 1 as before); --retry-failed reads it; touching it makes it a candidate again."""
    root, edfs = tree(SHORT, MISSING)
    cache = tmp_path / "cache"
    first = run_cli("ingest", root, "--cache", cache, "--quiet", "--json")
    assert first.returncode == 1 and json.loads(first.stdout)["failed"] == 1
    reads: list[str] = []  # file names: the reader parses a private copy of the file
    original = eegcache.ops.prepare.read_recording
    monkeypatch.setattr(eegcache.ops.prepare, "read_recording",
                        lambda path, *a, **k: reads.append(Path(path).name) or original(path, *a, **k))
    again = ingest(root, cache, IngestConfig(), progress=False)
    assert (again.failed, again.failed_unchanged, again.unchanged) == (1, 1, 1) and reads == []
    assert again.failures[0][0] == str(edfs[MISSING]) and "missing required electrode" in again.failures[0][1]
    retried = ingest(root, cache, IngestConfig(retry_failed=True), progress=False)
    assert (retried.failed, retried.failed_unchanged) == (1, 0) and reads == [edfs[MISSING].name]
    os.utime(edfs[MISSING])
    touched = ingest(root, cache, IngestConfig(), progress=False)
    assert (touched.failed, touched.failed_unchanged) == (1, 0) and reads == [edfs[MISSING].name] * 2
    done = run_cli("ingest", root, "--cache", cache, "--quiet")
    assert done.returncode == 1 and "failed before and have not changed since: not read again" in done.stdout
