"""SzCORE output and scoring (issue 11): hypotheses of known shape score exactly the numbers computed by hand, the
written ``_events.tsv`` files have the SzCORE columns and paths, and ``trainer evaluate --format szcore`` on a
BIDS cache reports what the reference algorithm computes from the files it wrote."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from test_bids import bids_root, write_recording

from trainer import szcore
from trainer.metrics import score_recording as score_256
from trainer.metrics import summarize
from trainer.postprocess import Event

DAY = 86400.0


def one(ref, hyp, duration=600.0) -> dict:
    """Scores of one subject with one recording."""
    return szcore.summarize_subjects([("s", szcore.score_recording(ref, hyp, duration))])


def test_perfect_hypothesis() -> None:
    m = one([(100.0, 160.0)], [(100.0, 160.0)])
    assert (m["event_sensitivity"], m["event_precision"], m["event_f1"], m["event_fp_per_24h"]) == (1, 1, 1, 0)
    assert (m["sample_sensitivity"], m["sample_precision"], m["sample_f1"]) == (1, 1, 1)
    assert m["per_subject"]["s"]["event_tp"] == 1 and m["per_subject"]["s"]["sample_tp"] == 60
    assert m["event_f1_std"] == 0 and m["subjects"] == 1


def test_empty_hypothesis() -> None:
    """No detection: sensitivity 0, precision undefined (NaN in timescoring, None here), F1 0, no false alarm."""
    m = one([(100.0, 160.0)], [])
    assert (m["event_sensitivity"], m["event_precision"], m["event_f1"], m["event_fp_per_24h"]) == (0, None, 0, 0)


def test_one_false_alarm() -> None:
    """The seizure found, plus one detection 240 s after its tolerance: TP 1, FP 1 → precision 1/2, F1 2/3,
    1 FP in 600 s = 144 per 24 h."""
    m = one([(100.0, 160.0)], [(100.0, 160.0), (400.0, 410.0)])
    assert (m["event_sensitivity"], m["event_precision"]) == (1, 0.5)
    assert m["event_f1"] == pytest.approx(2 / 3) and m["event_fp_per_24h"] == pytest.approx(144.0)
    s = m["per_subject"]["s"]
    assert (s["event_tp"], s["event_fp"], s["event_ref"], s["sample_fp"]) == (1, 1, 1, 10)


def test_a_late_detection_inside_the_tolerance_counts() -> None:
    """A detection 40 s after the seizure ended lies inside the 60 s tolerance: a true positive, no false alarm
    (though no sample overlaps); 70 s after, it is a miss and a false alarm."""
    m = one([(100.0, 160.0)], [(200.0, 210.0)])
    assert (m["event_sensitivity"], m["event_precision"], m["event_f1"], m["event_fp_per_24h"]) == (1, 1, 1, 0)
    assert (m["sample_sensitivity"], m["sample_precision"], m["sample_f1"]) == (0, 0, 0)
    late = one([(100.0, 160.0)], [(230.0, 240.0)])
    assert (late["event_sensitivity"], late["event_precision"], late["event_f1"]) == (0, 0, 0)
    assert late["event_fp_per_24h"] == pytest.approx(144.0)
    early = one([(100.0, 160.0)], [(75.0, 80.0)])  # 20 s before the onset: inside the 30 s tolerance
    assert early["event_sensitivity"] == 1 and early["event_fp_per_24h"] == 0


def test_two_subjects_of_different_sizes_are_averaged_per_subject() -> None:
    """Subject A: two recordings (1 h each), 3 seizures all found, 1 false alarm → sensitivity 1, precision 3/4,
    F1 6/7, FP/24h 1 / (2 h) = 12. Subject B: one 30 min recording, its seizure missed → sensitivity 0, precision
    undefined, F1 0, FP/24h 0. Means over subjects: sensitivity 1/2 (std 1/2), precision 3/4 (B has none; std 0),
    F1 3/7 (std 3/7), FP/24h 6 (std 6). Summed over the dataset instead: TP 3, FP 1, 4 seizures → F1 3/4."""
    a1 = szcore.score_recording([(100.0, 150.0), (1000.0, 1100.0)], [(110.0, 140.0), (1010.0, 1050.0),
                                                                    (2000.0, 2010.0)], 3600.0)
    a2 = szcore.score_recording([(500.0, 560.0)], [(520.0, 530.0)], 3600.0)
    b = szcore.score_recording([(300.0, 400.0)], [], 1800.0)
    m = szcore.summarize_subjects([("A", a1), ("A", a2), ("B", b)])
    assert m["subjects"] == 2
    assert (m["event_sensitivity"], m["event_sensitivity_std"]) == (0.5, 0.5)
    assert (m["event_precision"], m["event_precision_std"]) == (0.75, 0.0)
    assert m["event_f1"] == pytest.approx(3 / 7) and m["event_f1_std"] == pytest.approx(3 / 7)
    assert m["event_fp_per_24h"] == pytest.approx(6.0) and m["event_fp_per_24h_std"] == pytest.approx(6.0)
    assert m["per_subject"]["A"]["event_f1"] == pytest.approx(6 / 7) and m["per_subject"]["B"]["event_precision"] is None
    assert m["per_subject"]["A"]["duration_s"] == 7200 and m["per_subject"]["A"]["recordings"] == 2
    # the dataset-wide totals, as the trainer reports them (counts summed over recordings, 256 Hz masks)
    fs = 256

    def masks(ref, hyp, d):
        t = np.arange(int(d * fs)) / fs
        return [np.any([(t >= a) & (t < z) for a, z in ev], axis=0) if ev else np.zeros(t.size, bool)
                for ev in (ref, hyp)]

    total = (score_256(*masks([(100, 150), (1000, 1100)], [(110, 140), (1010, 1050), (2000, 2010)], 3600), fs)
             + score_256(*masks([(500, 560)], [(520, 530)], 3600), fs)
             + score_256(*masks([(300, 400)], [], 1800), fs))
    totals = summarize(total)
    assert (totals["event_tp"], totals["event_fp"], totals["event_ref"]) == (3, 1, 4)
    assert totals["event_f1"] == pytest.approx(0.75) and totals["event_fp_per_24h"] == pytest.approx(1 / 9000 * DAY)


def test_hypotheses_are_scored_as_their_tsv_holds_them() -> None:
    """Times are rounded to 2 decimals as written; the 1 Hz masks take int(onset) to int(onset + duration), as
    szcore-evaluation's reader does (an event at 9.996-10.5 s covers second 10 only)."""
    assert szcore.tsv_events([Event(9.996, 10.5, 0.9)]) == [(10.0, 0.5, 0.9)]
    assert szcore.mask_1hz([(9.4, 1.7)], 12.9).tolist() == [False] * 9 + [True, True, False]


def test_events_tsv_columns_rows_and_paths() -> None:
    text = szcore.events_tsv([Event(12.0, 20.5, 0.876), Event(100.0, 130.0, 0.95)], 300.0)
    rows = list(csv.reader(text.splitlines(), delimiter="\t"))
    assert rows[0] == ["onset", "duration", "eventType", "confidence", "channels", "dateTime", "recordingDuration"]
    assert rows[1:] == [["12.00", "8.50", "sz", "0.88", "n/a", "n/a", "300.00"],
                        ["100.00", "30.00", "sz", "0.95", "n/a", "n/a", "300.00"]]
    assert szcore.events_tsv([], 61.5).splitlines()[1].split("\t") == ["0.00", "61.50", "bckg", "n/a", "n/a", "n/a",
                                                                      "61.50"]
    bids_rel = "sub-01/ses-02/eeg/sub-01_ses-02_task-szMonitoring_run-03_eeg.edf"
    assert szcore.tsv_path("bids", bids_rel, "x") == PurePosixPath(bids_rel.replace("_eeg.edf", "_events.tsv"))
    assert szcore.tsv_path("tusz", "edf/dev/aaaaaaac/s001_2003/01_tcp_ar/aaaaaaac_s001_t002.edf", "aaaaaaac_s001_t002",
                           "aaaaaaac", "s001_2003", "t002") == PurePosixPath(
        "sub-aaaaaaac/ses-001/eeg/sub-aaaaaaac_ses-001_task-szMonitoring_run-002_events.tsv")
    assert szcore.tsv_path("folder", "a/rec_1.edf", "rec_1") == PurePosixPath(
        "sub-rec1/eeg/sub-rec1_task-szMonitoring_events.tsv")


# --- end to end: a BIDS cache, fit (per-subject validation F1), evaluate --format szcore --------------------------


def reference_score(reference: Path, hypothesis: Path) -> dict:
    """szcore-evaluation's evaluate_dataset, written out from its documented algorithm with csv + timescoring: per
    subject folder of the reference, every _events.tsv, 1 Hz masks from its rows (a missing hypothesis: none),
    counts summed per subject, then nanmean / nanstd over subjects."""
    from timescoring import scoring
    from timescoring.annotations import Annotation

    def mask(path: Path, n: int | None = None):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        m = np.zeros(int(float(rows[0]["recordingDuration"])) if n is None else n, dtype=bool)
        for r in rows:
            if r["eventType"] != "bckg":
                m[int(float(r["onset"])): int(float(r["onset"]) + float(r["duration"]))] = True
        return m

    f1s, sens = [], []
    for subject in sorted(reference.glob("sub-*")):
        tp = fp = ref_true = 0
        for ref_tsv in sorted(subject.glob("**/*_events.tsv")):
            ref = mask(ref_tsv)
            hyp_tsv = hypothesis / ref_tsv.relative_to(reference)
            hyp = mask(hyp_tsv) if hyp_tsv.exists() else np.zeros_like(ref)
            ev = scoring.EventScoring(Annotation(ref, 1), Annotation(hyp, 1))
            tp, fp, ref_true = tp + ev.tp, fp + ev.fp, ref_true + ev.refTrue
        sens.append(tp / ref_true if ref_true else math.nan)
        f1s.append(math.nan if ref_true + fp == 0 else 2 * tp / (2 * tp + fp + ref_true - tp))
    return {"event_f1": float(np.nanmean(f1s)), "event_f1_std": float(np.nanstd(f1s)),
            "event_sensitivity": float(np.nanmean(sens)), "subjects": len(f1s)}


def test_evaluate_writes_szcore_tsvs_that_score_as_reported(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from eegcache.ops.ingest import ingest
    from eegcache.pipeline.spec import IngestConfig
    from trainer.cli import main
    from trainer.fit import BEST, METRICS_FILE, TrainConfig, fit

    root = bids_root(tmp_path / "ds", "participant_id\tsplit\nsub-01\ttrain\nsub-02\tdev\nsub-03\tdev\n")
    header = "onset\tduration\teventType\tconfidence\tchannels\tdateTime\trecordingDuration\n"
    for i, (sub, run, events) in enumerate([("01", "01", [(30, 40)]), ("01", "02", [(100, 20)]),
                                            ("02", "01", [(50, 30)]), ("02", "02", []), ("03", "01", [(10, 60)])]):
        rows = "".join(f"{a:.2f}\t{d:.2f}\tsz_foc_ia\tn/a\tn/a\tn/a\t180.00\n" for a, d in events) or \
            "0.00\t180.00\tbckg\tn/a\tn/a\tn/a\t180.00\n"
        write_recording(root, sub, run=run, duration_s=180, events=header + rows, seed=i)
    cache = tmp_path / "cache"
    summary = ingest(root, cache, IngestConfig(), progress=False)
    assert (summary.ingested, summary.failed) == (5, 0)
    run = tmp_path / "run"
    fit(TrainConfig(cache=str(cache), out=str(run), epochs=1, batch_size=2, seed=0, allow_incomplete=True),
        log=lambda _line: None, progress=False)
    val = json.loads((run / METRICS_FILE).read_text().splitlines()[0])["val"]
    assert val["szcore_subjects"] == 2 and "szcore_event_f1" in val and "szcore_event_f1_std" in val
    out = tmp_path / "hyp"
    res = CliRunner().invoke(main, ["evaluate", "--cache", str(cache), "--checkpoint", str(run / BEST), "--split",
                                    "dev", "--format", "szcore", "--out", str(out), "--threshold", "0.0", "--json"])
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.output)["metrics"]
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.tsv"))
    assert written == sorted(p.relative_to(root).as_posix() for p in root.glob("sub-0[23]/**/*_events.tsv"))
    for path in out.rglob("*.tsv"):
        lines = path.read_text().splitlines()
        assert lines[0].split("\t") == list(szcore.COLUMNS)
        assert {line.split("\t")[2] for line in lines[1:]} <= {"sz", "bckg"}
    dev_reference = tmp_path / "dev-reference"  # the reference scorer walks every subject: give it the dev ones
    for sub in ("sub-02", "sub-03"):
        shutil.copytree(root / sub, dev_reference / sub)
    expected = reference_score(dev_reference, out)
    assert metrics["szcore_subjects"] == expected["subjects"] == 2
    for key in ("event_f1", "event_f1_std", "event_sensitivity"):
        assert metrics[f"szcore_{key}"] == pytest.approx(expected[key]), key
    # threshold 0: every sample is a detection, so every dev recording holds sz rows and sub-02 run-02 a false alarm
    assert metrics["szcore_per_subject"]["ds/02"]["event_fp"] >= 1
