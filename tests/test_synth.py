"""The synthetic TUSZ tree honours TUSZ_FORMAT.md: readers, benchmarks and demos rely on every fact below."""

from __future__ import annotations

import re
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np
import pyedflib
import pytest

from eegcache.sources.synth import ELECTRODES, OLD_STYLE_SESSION, PREFILTER, SynthRecording, synthesize

TUSZ_PATH = re.compile(
    r"edf/(train|dev|eval)/([a-z]{8})/s(\d{3})_(\d{4})/(0[1-4]_tcp_(ar|le)(_a)?)/\2_s\3_t(\d{3})\.(edf|csv|csv_bi)$"
)
OLD_STYLE_PATH = re.compile(
    r"edf/(train|dev|eval)/([a-z]{8})/s(\d{3})_(\d{4})_\d{2}_\d{2}/(0[1-4]_tcp_(ar|le)(_a)?)/\2_s\3_t(\d{3})\.(edf|csv|csv_bi)$"
)
HEADER = [
    "# version = csv_v1.0.0",
    "# bname = {stem}",
    "# duration = {duration:.2f} secs",
    "# montage_file = $NEDC_NFC/lib/nedc_eas_default_montage.txt",
    "#",
    "channel,start_time,stop_time,label,confidence",
]
TIME = r"\d+\.\d{4}"
ROW = re.compile(rf"^([A-Z0-9]+(?:-[A-Z0-9]+)?),({TIME}),({TIME}),([a-z]+),1\.0000$")
TCP = (
    "FP1-F7 F7-T3 T3-T5 T5-O1 FP2-F8 F8-T4 T4-T6 T6-O2 A1-T3 T3-C3 C3-CZ CZ-C4 C4-T4 T4-A2 "
    "FP1-F3 F3-C3 C3-P3 P3-O1 FP2-F4 F4-C4 C4-P4 P4-O2"
).split()
LABEL = re.compile(r"^EEG (\w+)-(REF|LE)$")
SYNONYMS = {"T7": "T3", "T8": "T4", "P7": "T5", "P8": "T6"}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[SynthRecording]]:
    out = tmp_path_factory.mktemp("tusz")
    return out, synthesize(out, hours=1.0, seed=1)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[SynthRecording]]:
    out = tmp_path_factory.mktemp("tusz_small")
    return out, synthesize(out, hours=0.5, seed=7)


def readable(recordings: list[SynthRecording]) -> list[SynthRecording]:
    return [r for r in recordings if not r.bad_start_date]


def annotation(path: Path, duration: int) -> list[tuple[str, float, float, str]]:
    """Rows of a .csv/.csv_bi after checking the exact comment block and the 4-decimal row format."""
    lines = path.read_text().splitlines()
    expected = [h.format(stem=path.stem, duration=duration) for h in HEADER]
    assert lines[: len(HEADER)] == expected, path
    rows = []
    for line in lines[len(HEADER) :]:
        m = ROW.match(line)
        assert m, f"{path.name}: bad row {line!r}"
        rows.append((m[1], float(m[2]), float(m[3]), m[4]))
    return rows


def union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[list[float]] = []
    for start, stop in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    return [(a, b) for a, b in merged]


def test_every_path_matches_the_tusz_layout(tree):
    out, recs = tree
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert len(files) == 3 * len(recs)
    for rec in recs:
        for suffix in (".edf", ".csv", ".csv_bi"):
            assert rec.edf_path.with_suffix(suffix).is_file()
        assert rec.edf_path.is_absolute()
    old = [f for f in files if f"/{OLD_STYLE_SESSION}/" in f]
    assert old, "one older-style session folder s002_2003_07_21"
    for f in files:
        assert TUSZ_PATH.search(f) or (f in old and OLD_STYLE_PATH.search(f)), f
    for rec in recs:
        rel = rec.edf_path.relative_to(out).as_posix()
        assert rel == f"edf/{rec.split}/{rec.subject}/{rec.session}/{rec.montage}/{rec.subject}_{rec.session[:4]}_{rec.token}.edf"


def test_naming_quirks(tree):
    _, recs = tree
    assert {r.montage for r in recs} >= {"01_tcp_ar", "02_tcp_le", "03_tcp_ar_a"}
    montages_by_subject: dict[str, set[str]] = {}
    for r in recs:
        montages_by_subject.setdefault(r.subject, set()).add(r.montage)
    assert any(len(m) > 1 for m in montages_by_subject.values()), "a patient whose sessions use different montages"
    sessions: dict[tuple[str, str], list[int]] = {}
    for r in recs:
        sessions.setdefault((r.subject, r.session), []).append(int(r.token[1:]))
    assert any(min(tokens) > 0 for tokens in sessions.values()), "a session starting at t001"
    assert any(min(int(s[1:4]) for (subj, s) in sessions if subj == subject) > 1 for subject in montages_by_subject)


@pytest.mark.parametrize("which", ["tree", "small"])
def test_splits_are_patient_disjoint_sized_and_all_have_seizures(which, request):
    _, recs = request.getfixturevalue(which)
    subjects = {split: {r.subject for r in recs if r.split == split} for split in ("train", "dev", "eval")}
    assert not subjects["train"] & subjects["dev"]
    assert not subjects["train"] & subjects["eval"]
    assert not subjects["dev"] & subjects["eval"]
    total = sum(r.duration_s for r in recs)
    for split, share in (("train", 0.60), ("dev", 0.25), ("eval", 0.15)):
        hours = sum(r.duration_s for r in recs if r.split == split)
        assert abs(hours / total - share) < 0.05, split
        assert any(r.events for r in readable(recs) if r.split == split), f"{split} has no seizures"
    assert all(re.fullmatch("[a-z]{8}", s) for s in set().union(*subjects.values()))


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, small):
    def snapshot(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    reference, _ = small
    again = synthesize(tmp_path / "again", hours=0.5, seed=7)
    assert snapshot(tmp_path / "again") == snapshot(reference)
    assert [r.events for r in again] == [r.events for r in small[1]]
    synthesize(tmp_path / "other", hours=0.5, seed=8)
    assert snapshot(tmp_path / "other") != snapshot(reference)


def test_quick_signal_keeps_the_plan_and_changes_only_signals(tmp_path, small):
    reference, recs = small
    quick = synthesize(tmp_path / "quick", hours=0.5, seed=7, quick_signal=True)
    assert [(r.edf_path.relative_to(tmp_path / "quick"), r.events) for r in quick] == [
        (r.edf_path.relative_to(reference), r.events) for r in recs
    ]
    first = recs[0].edf_path.relative_to(reference).with_suffix(".csv_bi")
    assert (tmp_path / "quick" / first).read_bytes() == (reference / first).read_bytes()
    assert (tmp_path / "quick" / first).with_suffix(".edf").read_bytes() != (reference / first).with_suffix(".edf").read_bytes()


def test_file_s_gives_many_files_of_that_length(tmp_path):
    """A short-segment tree (the bench's per-file figure): every file exactly ``file_s`` long, every split there,
    TUSZ names and annotations, seizures within the files."""
    recs = synthesize(tmp_path, hours=40 * 30 / 3600, seed=3, quick_signal=True, file_s=30)
    assert len(recs) == 40 and {r.duration_s for r in recs} == {30}
    assert {r.split for r in recs} == {"train", "dev", "eval"}
    assert any(r.events for r in recs) and all(0 <= a < b <= 30 for r in recs for a, b in r.events)
    for r in recs:
        assert TUSZ_PATH.search(r.edf_path.relative_to(tmp_path).as_posix()) or \
            OLD_STYLE_PATH.search(r.edf_path.relative_to(tmp_path).as_posix())
        assert r.edf_path.with_suffix(".csv_bi").is_file()
    readable_one = next(r for r in recs if not r.bad_start_date)
    with pyedflib.EdfReader(str(readable_one.edf_path)) as f:
        assert f.getFileDuration() == 30


def test_edf_headers_read_back_with_pyedflib(tree):
    _, recs = tree
    orders, slow, synonyms, decoys = set(), 0, 0, 0
    for rec in readable(recs):
        raw = rec.edf_path.read_bytes()
        ns = int(raw[252:256])
        header_labels = [raw[256 + 16 * i : 256 + 16 * (i + 1)].decode("ascii") for i in range(ns)]
        assert all(len(label) == 16 and label == label.strip().ljust(16) for label in header_labels)
        with pyedflib.EdfReader(str(rec.edf_path)) as f:
            assert f.filetype == pyedflib.FILETYPE_EDF
            assert f.datarecord_duration == 1.0
            assert f.getFileDuration() == rec.duration_s
            assert f.getStartdatetime().date() == datetime(int(rec.session[5:9]), 1, 1).date()
            labels = f.getSignalLabels()
            assert labels == [h.strip() for h in header_labels]
            for h in f.getSignalHeaders():
                assert (h["physical_min"], h["physical_max"]) == (-4999.84, 4999.84)
                assert (h["digital_min"], h["digital_max"]) == (-32767, 32767)
                assert h["prefilter"] == PREFILTER
            electrodes: dict[str, str] = {}
            for i, label in enumerate(labels):
                if label in ("IBI", "BURSTS", "SUPPR"):
                    assert f.getSampleFrequency(i) == 1.0
                    slow += 1
                    continue
                assert f.getSampleFrequency(i) == rec.fs
                m = LABEL.match(label)
                if m:
                    assert m[2] == ("LE" if "_le" in rec.montage else "REF")
                    electrodes[SYNONYMS.get(m[1], m[1])] = label
                    synonyms += m[1] in SYNONYMS
                    decoys += m[1] == "C3P"
        expected = set(ELECTRODES) - set(rec.missing_electrodes)
        assert expected <= set(electrodes), rec.edf_path.name
        assert ("A1" in electrodes) == (not rec.montage.endswith("_a"))
        orders.add(tuple(labels[:5]))
    assert {r.fs for r in recs} == {250.0, 256.0, 400.0, 512.0}
    assert len(orders) > 1, "channel order varies between files"
    assert slow and synonyms and decoys


def test_bad_start_date_file_refused_by_pyedflib_read_by_mne(tree):
    mne = pytest.importorskip("mne")
    _, recs = tree
    bad = [r for r in recs if r.bad_start_date]
    assert len(bad) == 1 and bad[0].split == "eval"
    path = bad[0].edf_path
    assert path.read_bytes()[168:176] == b"01:01:85"
    with pytest.raises(OSError, match="the startdate is incorrect"):
        pyedflib.EdfReader(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = mne.io.read_raw_edf(str(path), preload=False, verbose="error")
    assert raw.info["sfreq"] == bad[0].fs
    assert raw.n_times == bad[0].duration_s * int(bad[0].fs)
    assert "EEG FP1-REF" in raw.ch_names or "EEG FP1-LE" in raw.ch_names


def test_csv_bi_agrees_with_events_and_has_both_bckg_styles(tree):
    _, recs = tree
    stubs = fulls = 0
    for rec in recs:
        rows = annotation(rec.edf_path.with_suffix(".csv_bi"), rec.duration_s)
        assert {r[0] for r in rows} == {"TERM"}
        if rec.events:
            assert [r[3] for r in rows] == ["seiz"] * len(rows)
            assert [(r[1], r[2]) for r in rows] == list(rec.events)
        else:
            assert len(rows) == 1 and rows[0][3] == "bckg"
            start, stop = rows[0][1:3]
            if (start, stop) == (0.0, float(rec.duration_s)):
                fulls += 1
            else:
                assert 0 < start < 0.05 and 0.9 < stop - start < 1.1
                stubs += 1
    assert stubs and fulls


def test_csv_channels_tile_the_file_and_union_to_csv_bi(tree):
    _, recs = tree
    for rec in recs:
        rows = annotation(rec.edf_path.with_suffix(".csv"), rec.duration_s)
        channels = list(dict.fromkeys(r[0] for r in rows))
        expected = [c for c in TCP if not ("A1" in c or "A2" in c)] if rec.montage.endswith("_a") else TCP
        assert channels == expected
        for channel in channels:
            spans = [(r[1], r[2]) for r in rows if r[0] == channel]
            assert spans[0][0] == 0.0 and spans[-1][1] == rec.duration_s
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False)), channel
        seizures = [(r[1], r[2]) for r in rows if r[3] != "bckg"]
        assert union(seizures) == list(rec.events)
        assert {r[3] for r in rows} <= {"bckg", "fnsz", "gnsz", "spsz", "cpsz", "absz", "tnsz", "cnsz", "tcsz", "atsz", "mysz"}


def test_seizure_statistics(tree):
    _, recs = tree
    total = sum(r.duration_s for r in recs)
    events = [e for r in recs for e in r.events]
    assert 0.04 <= sum(b - a for a, b in events) / total <= 0.08
    assert all(b - a >= 3.6 - 1e-9 for a, b in events)
    assert 0.25 <= sum(1 for r in recs if not r.events) / len(recs) <= 0.75
    for r in recs:
        assert all(0 <= a < b <= r.duration_s for a, b in r.events)
        assert all(round(t, 4) == t for e in r.events for t in e)
        gaps = [b[0] - a[1] for a, b in zip(r.events, r.events[1:], strict=False)]
        assert all(g >= 3.0 - 1e-9 for g in gaps)
    assert any(len(r.events) > 1 for r in recs)
    assert any(r.events[0][0] == 0.0 for r in recs if r.events)
    assert any(r.events[-1][1] == r.duration_s for r in recs if r.events)
    assert any(abs(b[0] - a[1] - 3.0) < 1e-9 for r in recs for a, b in zip(r.events, r.events[1:], strict=False))
    assert any(r.duration_s < 60 for r in recs), "a file shorter than a 60 s window"
    assert any(r.duration_s in (300, 601) for r in recs)


def test_seizures_stand_out_of_the_background(tree):
    _, recs = tree
    checked = 0
    for rec in readable(recs):
        if not rec.events:
            continue
        with pyedflib.EdfReader(str(rec.edf_path)) as f:
            picks = [
                i
                for i, label in enumerate(f.getSignalLabels())
                if (m := LABEL.match(label)) and SYNONYMS.get(m[1], m[1]) in ELECTRODES
            ]
            x = np.stack([f.readSignal(i) for i in picks])
        fs = int(rec.fs)
        background = np.ones(x.shape[1], dtype=bool)
        for a, b in rec.events:
            background[int(a * fs) : int(b * fs)] = False
        if background.sum() < 10 * fs:
            continue  # a very short file can be all seizure
        bg_rms = x[:, background].std(axis=1)
        assert 10 < np.median(bg_rms) < 80, "background of a few tens of µV"
        for a, b in rec.events:
            if b - a >= 5:
                ratio = x[:, int(a * fs) : int(b * fs)].std(axis=1) / bg_rms
                assert ratio.max() > 2.0, (rec.edf_path.name, a, b, ratio.max())
                checked += 1
    assert checked


def test_files_lacking_fz_and_pz_really_lack_them(tree):
    _, recs = tree
    lacking = [r for r in recs if r.missing_electrodes]
    assert any(r.split == "train" for r in lacking)
    assert all(r.missing_electrodes == ("FZ", "PZ") for r in lacking)
    for rec in readable(recs):
        with pyedflib.EdfReader(str(rec.edf_path)) as f:
            tokens = {m[1] for label in f.getSignalLabels() if (m := LABEL.match(label))}
        assert ({"FZ", "PZ"} & tokens) == ({"FZ", "PZ"} - set(rec.missing_electrodes))
