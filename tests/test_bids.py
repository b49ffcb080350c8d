"""BIDS-EEG ingest (issue 11): trees written by the field's converter, ``epilepsy2bids``, from ``eegcache synth``
trees, and small hand-written trees for every sidecar and TSV error.

Expected labels and entities are computed here from the converter's own files (``_events.tsv``, ``participants.tsv``
and the file names) with the csv module and the literal label rule, never with the library.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from edf_factory import Channel, expected_windows, query, run_cli, tone, write_edf

from eegcache.sources.synth import synthesize

pytest.importorskip("epilepsy2bids")

FS = 256
ELECTRODES = ("Fp1", "F3", "C3", "P3", "O1", "F7", "T3", "T5", "Fz", "Cz", "Pz",
              "Fp2", "F4", "C4", "P4", "O2", "F8", "T4", "T6")  # fmt: skip
EVENTS_HEADER = "onset\tduration\teventType\tconfidence\tchannels\tdateTime\trecordingDuration\n"


def ingest_json(src: Path, cache: Path, *flags: object, ok: bool = True) -> dict:
    done = run_cli("ingest", src, "--cache", cache, "--json", "--quiet", *flags)
    assert (done.returncode == 0) == ok, done.stderr[-3000:]
    return json.loads(done.stdout)


# --- trees written by epilepsy2bids ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """``eegcache synth`` → epilepsy2bids' TUH converter → a BIDS tree. The converter cannot read the file with the
    start date ``01:01:85`` (pyedflib refuses it), so that file is left out, as SZCORE_FORMAT.md says."""
    from epilepsy2bids.bids.tuh.convert2bids import convert

    base = tmp_path_factory.mktemp("e2b")
    truth = synthesize(base / "tusz", hours=0.15, seed=5, quick_signal=True)
    for rec in truth:
        if rec.bad_start_date:
            for sibling in rec.edf_path.parent.glob(rec.edf_path.stem + ".*"):
                sibling.unlink()
    out = base / "bids"
    convert((base / "tusz" / "edf").resolve(), out.resolve())
    assert (out / "dataset_description.json").is_file() and len(list(out.rglob("*_eeg.edf"))) >= 4
    return out


def _tsv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _expected_events(tsv: Path) -> tuple[list[tuple[float, float, str]], float]:
    """Seizure events of one ``_events.tsv`` by the documented rules: every row other than bckg, clipped to the
    recording, overlapping or touching ones merged (types joined with '+', sorted)."""
    rows = _tsv_rows(tsv)
    duration = float(rows[0]["recordingDuration"])
    spans = sorted((max(float(r["onset"]), 0.0), min(float(r["onset"]) + float(r["duration"]), duration),
                    r["eventType"]) for r in rows if r["eventType"] != "bckg")
    merged: list[list] = []
    for a, b, kind in spans:
        if b <= a:
            continue
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
            merged[-1][2].add(kind)
        else:
            merged.append([a, b, {kind}])
    return [(a, b, "+".join(sorted(k))) for a, b, k in merged], duration


def test_trees_written_by_epilepsy2bids_ingest_with_their_labels_and_entities(converted: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    summary = ingest_json(converted, cache)
    edfs = sorted(converted.rglob("*_eeg.edf"))
    assert (summary["ingested"], summary["failed"], summary["dataset"]) == (len(edfs), 0, "bids")
    splits = {r["participant_id"]: r["split"] for r in _tsv_rows(converted / "participants.tsv")}
    for edf in edfs:
        name = edf.name[: -len("_eeg.edf")]
        entities = dict(part.split("-", 1) for part in name.split("_"))
        row = query(cache, "SELECT subject, session, run, split, reference, power_line_hz, status FROM recordings "
                           "WHERE name = ?", (name,))
        assert row == [(entities["sub"], entities["ses"], entities["run"], splits["sub-" + entities["sub"]],
                        "Common Average", 60.0, "ingested")], name
        events, duration = _expected_events(edf.with_name(name + "_events.tsv"))
        stored = query(cache, "SELECT start_s, stop_s, event_type FROM seizure_events WHERE recording = ? "
                              "ORDER BY start_s", (name,))
        assert [(round(a, 6), round(b, 6), t) for a, b, t in stored] == [(round(a, 6), round(b, 6), t)
                                                                          for a, b, t in events], name
        n = int(round(duration * FS))
        t = np.arange(n) / FS
        mask = np.zeros(n, dtype=bool)
        for a, b, _ in events:
            mask |= (t >= a) & (t < b)
        expected = [(round(s, 6), lab) for s, lab, _ in expected_windows(mask, 60, 60)]
        got = query(cache, "SELECT start_s, label FROM window_labels WHERE recording = ? ORDER BY start_s", (name,))
        assert [(round(s, 6), lab) for s, lab in got] == expected, name
    assert query(cache, "SELECT DISTINCT event_type FROM seizure_events") == [("sz",)]  # synth writes 'seiz' rows
    again = ingest_json(converted, cache)
    assert (again["unchanged"], again["edf_read"]) == (len(edfs), 0)


def test_converted_tree_under_other_montages(converted: Path, tmp_path: Path) -> None:
    """The TUH conversion stores <E>-Avg channels: every montage can be made from them."""
    cache = tmp_path / "cache"
    n = len(list(converted.rglob("*_eeg.edf")))
    for montage, channels in (("average", 19), ("double-banana", 18), ("tcp", 20)):  # no A1/A2 in the conversion
        summary = ingest_json(converted, cache, "--montage", montage, "--pipeline", montage)
        assert (summary["ingested"], summary["failed"]) == (n, 0), montage
        assert query(cache, "SELECT DISTINCT o.n_channels FROM recordings r JOIN objects o ON o.key = r.object_key "
                            "JOIN pipelines p ON p.id = r.pipeline_id WHERE p.name = ?", (montage,)) == [(channels,)]


def test_a_subfolder_and_forced_layout(converted: Path, tmp_path: Path) -> None:
    """A subject folder is part of its BIDS dataset; ``--layout bids`` reads a tree without
    dataset_description.json; EDFs outside sub-*/[ses-*/]eeg/ (derivatives) are not recordings."""
    cache = tmp_path / "cache"
    first = sorted(converted.glob("sub-*"))[0]
    summary = ingest_json(first, cache)
    assert summary["dataset"] == "bids" and summary["failed"] == 0
    assert query(cache, "SELECT DISTINCT rel_path LIKE 'sub-%' FROM recordings") == [(1,)]
    bare = tmp_path / "bare"
    shutil.copytree(converted, bare)
    (bare / "dataset_description.json").unlink()
    stray = next(bare.rglob("*_eeg.edf"))
    (bare / "derivatives" / "x").mkdir(parents=True)
    shutil.copy(stray, bare / "derivatives" / "x" / stray.name)
    other = tmp_path / "other"
    summary = ingest_json(bare, other, "--layout", "bids")
    assert summary["failed"] == 0 and summary["ingested"] == len(list(converted.rglob("*_eeg.edf")))
    assert query(other, "SELECT layout FROM datasets") == [("bids",)]
    assert query(other, "SELECT count(*) FROM recordings WHERE rel_path LIKE 'derivatives/%'") == [(0,)]


# --- hand-written trees: every sidecar and TSV error -----------------------------------------------------------


def write_recording(root: Path, sub: str, ses: str | None = "01", run: str | None = "01", *, duration_s: int = 60,
                    events: str | None = None, sidecar: str | bytes | None = None, bipolar: bool = False,
                    seed: int = 0) -> Path:
    """One BIDS recording: an EDF of <E>-Avg channels (or CHB-MIT's bipolar labels), its events.tsv (default: one
    seizure 10-20 s) and its _eeg.json (default: 256 Hz, 60 Hz mains)."""
    folder = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "eeg"
    stem = "_".join([f"sub-{sub}"] + ([f"ses-{ses}"] if ses else []) + ["task-szMonitoring"]
                    + ([f"run-{run}"] if run else []))
    rng = np.random.default_rng(seed)
    labels = [f"{a.upper()}-{b.upper()}" for a, b in CHB_PAIRS] if bipolar else [f"{e}-Avg" for e in ELECTRODES]
    channels = [Channel(label, FS, tone(3.0 + i, FS, duration_s, phase=rng.uniform(0, 6))) for i, label in enumerate(labels)]
    edf = write_edf(folder / f"{stem}_eeg.edf", channels)
    if events is None:
        events = EVENTS_HEADER + f"10.00\t10.00\tsz_foc_ia\t1.00\tn/a\t2020-01-01 00:00:00\t{duration_s:.2f}\n"
    if events != "":
        (folder / f"{stem}_events.tsv").write_text(events)
    if sidecar is None:
        sidecar = json.dumps({"EEGReference": "Common Average", "SamplingFrequency": FS, "PowerLineFrequency": 60})
    (folder / f"{stem}_eeg.json").write_bytes(sidecar if isinstance(sidecar, bytes) else sidecar.encode())
    return edf


CHB_PAIRS = (("Fp1", "F7"), ("F7", "T7"), ("T7", "P7"), ("P7", "O1"), ("Fp1", "F3"), ("F3", "C3"), ("C3", "P3"),
             ("P3", "O1"), ("Fp2", "F4"), ("F4", "C4"), ("C4", "P4"), ("P4", "O2"), ("Fp2", "F8"), ("F8", "T8"),
             ("T8", "P8"), ("P8", "O2"), ("Fz", "Cz"), ("Cz", "Pz"))  # fmt: skip


def bids_root(path: Path, participants: str | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.9.0"}))
    if participants is not None:
        (path / "participants.tsv").write_text(participants)
    return path


ROW = "\t".join(["10.00", "10.00", "sz", "1.00", "n/a", "n/a", "60.00"]) + "\n"
# (case, kwargs for write_recording, the file the reason must name, the words it must hold)
BAD = [
    ("json-syntax", {"sidecar": "{\"PowerLineFrequency\": 50,"}, "_eeg.json", "not valid JSON"),
    ("json-list", {"sidecar": "[50]"}, "_eeg.json", "expected a JSON object, got list"),
    ("json-mains-text", {"sidecar": json.dumps({"PowerLineFrequency": "fifty"})}, "_eeg.json",
     "PowerLineFrequency is 'fifty', not a positive number"),
    ("json-mains-zero", {"sidecar": json.dumps({"PowerLineFrequency": 0})}, "_eeg.json", "PowerLineFrequency is 0"),
    ("json-reference", {"sidecar": json.dumps({"EEGReference": 5})}, "_eeg.json", "EEGReference is 5, not text"),
    ("json-bytes", {"sidecar": b"{\"EEGReference\": \"\xff\"}"}, "_eeg.json", "not valid UTF-8"),
    ("tsv-no-eventtype", {"events": "onset\tduration\n10\t5\n"}, "_events.tsv", "lacks the column(s) eventType"),
    ("tsv-onset", {"events": EVENTS_HEADER + ROW.replace("10.00", "abc", 1)}, "_events.tsv",
     "line 2: onset 'abc' is not a number"),
    ("tsv-duration", {"events": EVENTS_HEADER + ROW.replace("\t10.00", "\t-1.00", 1)}, "_events.tsv",
     "line 2: duration -1.0 is negative"),
    ("tsv-ragged", {"events": EVENTS_HEADER + "10.00\t10.00\tsz\n"}, "_events.tsv",
     "line 2: expected 7 tab-separated fields, got 3"),
    ("tsv-empty", {"events": "\n"}, "_events.tsv", "file is empty"),
    ("tsv-na-type", {"events": EVENTS_HEADER + ROW.replace("\tsz\t", "\tn/a\t")}, "_events.tsv", "eventType is n/a"),
    ("tsv-missing", {"events": ""}, "_eeg.edf", "no sub-"),
]


def test_every_malformed_sidecar_or_tsv_fails_its_recording_naming_the_file(tmp_path: Path) -> None:
    root = bids_root(tmp_path / "ds")
    for i, (_case, kwargs, _, _) in enumerate(BAD):
        write_recording(root, f"{i:02d}", seed=i, **kwargs)
    good = write_recording(root, "99", seed=99)
    summary = ingest_json(root, tmp_path / "cache", ok=False)
    assert (summary["ingested"], summary["failed"]) == (1, len(BAD))
    reasons = {Path(path).name.split("_")[0]: reason for path, reason in summary["failures"]}
    for i, (case, _, suffix, words) in enumerate(BAD):
        reason = reasons[f"sub-{i:02d}"]
        assert f"sub-{i:02d}_ses-01_task-szMonitoring_run-01{suffix}" in reason and words in reason, (case, reason)
    assert query(tmp_path / "cache", "SELECT name FROM recordings WHERE status = 'ingested'") == [
        (good.name[: -len("_eeg.edf")],)]


@pytest.mark.parametrize("participants, words", [
    ("subject\tsplit\nsub-01\ttrain\n", "the header lacks the column participant_id"),
    ("participant_id\tsplit\nsub-01\n", "line 2: expected 2 tab-separated fields, got 1"),
    ("participant_id\tsplit\nsub-01\ttrain\nsub-01\tdev\n", "line 3: participant sub-01 is listed twice"),
    ("participant_id\tsplit\n01\ttrain\n", "line 2: participant_id '01' is not sub-<label>"),
])
def test_a_malformed_participants_tsv_fails_every_recording_naming_it(tmp_path: Path, participants: str,
                                                                     words: str) -> None:
    root = bids_root(tmp_path / "ds", participants)
    write_recording(root, "01")
    write_recording(root, "02", seed=2)
    summary = ingest_json(root, tmp_path / "cache", ok=False)
    assert summary["failed"] == 2
    assert all(reason.startswith("participants.tsv: ") and words in reason for _, reason in summary["failures"])


def test_entities_split_types_and_the_mains_notch(tmp_path: Path) -> None:
    """ses and run may be absent; the split comes from participants.tsv when it has the column; every eventType
    other than bckg is a seizure with its type; events past the end are clipped and overlaps merged (types joined);
    a 50 Hz power line gives a 50 Hz notch, recorded, and another key than the same bytes at 60 Hz."""
    root = bids_root(tmp_path / "ds", "participant_id\tage\tsplit\nsub-a\t30\ttrain\nsub-b\t40\tn/a\n")
    events = EVENTS_HEADER + "".join(
        f"{a:.2f}\t{d:.2f}\t{kind}\tn/a\tn/a\tn/a\t60.00\n"
        for a, d, kind in ((5, 10, "sz_foc_ia"), (12, 8, "sz_gen"), (30, 2, "bckg"), (50, 30, "sz")))
    write_recording(root, "a", ses=None, run=None, events=events)
    write_recording(root, "b", ses="x2", run="07",
                    sidecar=json.dumps({"EEGReference": "Cz", "PowerLineFrequency": 50}))
    write_recording(root, "c", ses=None, run="01", sidecar=json.dumps({"PowerLineFrequency": "n/a"}))
    cache = tmp_path / "cache"
    summary = ingest_json(root, cache)
    assert summary["failed"] == 0 and any("ends after the recording" in w for w in query(
        cache, "SELECT warnings FROM recordings WHERE subject = 'a'")[0])
    rows = query(cache, "SELECT name, subject, session, run, split, reference, power_line_hz FROM recordings "
                        "ORDER BY name")
    assert rows == [("sub-a_task-szMonitoring", "a", None, None, "train", "Common Average", 60.0),
                    ("sub-b_ses-x2_task-szMonitoring_run-07", "b", "x2", "07", None, "Cz", 50.0),
                    ("sub-c_task-szMonitoring_run-01", "c", None, "01", None, None, None)]
    assert query(cache, "SELECT start_s, stop_s, event_type FROM seizure_events WHERE subject = 'a' "
                        "ORDER BY start_s") == [(5.0, 20.0, "sz_foc_ia+sz_gen"), (50.0, 60.0, "sz")]
    assert query(cache, "SELECT DISTINCT recording FROM seizure_events WHERE event_type LIKE '%sz_gen%'") == [
        ("sub-a_task-szMonitoring",)]
    notch = {s: json.loads(j)["notch_hz"] for s, j in query(
        cache, "SELECT r.subject, o.spec_json FROM recordings r JOIN objects o ON o.key = r.object_key")}
    assert notch == {"a": [60.0], "b": [50.0], "c": [60.0]}
    # the same EDF and events bytes at 60 Hz: another object (the resolved notch is part of the key)
    b = next(root.rglob("sub-b_*_eeg.json"))
    b.write_text(json.dumps({"EEGReference": "Cz", "PowerLineFrequency": 60}))
    old_key = query(cache, "SELECT object_key FROM recordings WHERE subject = 'b'")
    again = ingest_json(root, cache)
    # the changed sidecar is noticed; the signal is the one already stored for sub-a (same EDF bytes, 60 Hz)
    assert (again["unchanged"], again["edf_read"], again["failed"]) == (2, 0, 0)
    new_key = query(cache, "SELECT object_key FROM recordings WHERE subject = 'b'")
    assert new_key != old_key and query(cache, "SELECT power_line_hz FROM recordings WHERE subject = 'b'") == [(60.0,)]


def test_chbmit_like_bipolar_files_under_each_montage(tmp_path: Path) -> None:
    """18 stored bipolar channels: double-banana takes them as stored; referential and average cannot be made
    (the reason says the file is bipolar); tcp lacks pairs that need referential electrodes."""
    root = bids_root(tmp_path / "ds")
    write_recording(root, "01", bipolar=True)
    cache = tmp_path / "cache"
    summary = ingest_json(root, cache, "--montage", "double-banana")
    assert summary["ingested"] == 1
    for montage, words in (("referential", "holds bipolar channels only"), ("average", "holds bipolar channels only"),
                           ("tcp", "cannot make T3-C3 (no T3 or C3), C3-Cz (no C3 or Cz)")):
        summary = ingest_json(root, cache, "--montage", montage, "--pipeline", montage, ok=False)
        assert summary["failed"] == 1 and words in summary["failures"][0][1], (montage, summary["failures"])
