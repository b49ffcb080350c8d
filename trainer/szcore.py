"""SzCORE: predictions as one BIDS ``_events.tsv`` per recording, and scores as szcore-evaluation computes them.

Scoring (szcore-evaluation's ``evaluate_dataset``, re-implemented on ``timescoring`` because the reference package is
not installable here): per recording, 1 Hz masks built from the events as its TSV reader builds them (mask length
``int(recordingDuration)``, an event covering ``[int(onset), int(onset + duration))``); timescoring's
``EventScoring`` with the SzCORE parameters (30 s before / 60 s after tolerance, any overlap, events closer than
90 s merged, longer than 300 s split) and ``SampleScoring`` at 1 Hz. True positives, false positives, reference
events and duration are summed per subject; each subject gets its sensitivity, precision, F1 and FP/24 h (undefined
ratios are NaN, as timescoring makes them: sensitivity without reference events, precision without detections, F1
with neither); the dataset's figures are the mean and (population) standard deviation over subjects, NaN ignored.

Hypotheses are scored from the very values their TSV holds (times rounded to 2 decimals, as epilepsy2bids writes
them), so scoring the written folder with the reference scorer gives the same numbers.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict
from pathlib import PurePosixPath

import numpy as np

from trainer.metrics import Counts
from trainer.metrics import score_recording as score_masks

COLUMNS = ("onset", "duration", "eventType", "confidence", "channels", "dateTime", "recordingDuration")
SZCORE_FS = 1
TASK = "szMonitoring"
METRICS = ("sensitivity", "precision", "f1", "fp_per_24h")


def _r2(x: float) -> float:
    """A time as the TSV holds it (2 decimals) and reads it back."""
    return float(f"{x:.2f}")


def tsv_events(events) -> list[tuple[float, float, float | None]]:
    """(onset, duration, confidence) of detections as written to and read back from a TSV. ``events`` are objects
    with ``start_s``/``stop_s``/``confidence`` or (start, stop) pairs."""
    out = []
    for e in events:
        start, stop, conf = (e.start_s, e.stop_s, e.confidence) if hasattr(e, "start_s") else (e[0], e[1], None)
        out.append((_r2(start), _r2(stop - start), conf))
    return out


def events_tsv(events, duration_s: float) -> str:
    """The SzCORE hypothesis file of one recording: the 7 columns, one ``sz`` row per detection, one ``bckg`` row
    (the whole recording) when there is none; ``n/a`` for what is not known (channels, the start date)."""
    duration = f"{duration_s:.2f}"
    rows = ["\t".join(COLUMNS)]
    detections = tsv_events(events)
    for onset, length, conf in detections:
        rows.append("\t".join([f"{onset:.2f}", f"{length:.2f}", "sz", "n/a" if conf is None else f"{conf:.2f}",
                               "n/a", "n/a", duration]))
    if not detections:
        rows.append("\t".join(["0.00", duration, "bckg", "n/a", "n/a", "n/a", duration]))
    return "\n".join(rows) + "\n"


def _label(text: str | None, fallback: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9]", "", text or "")
    return clean or fallback


def tsv_path(layout: str | None, rel_path: str | None, name: str, subject: str | None = None,
             session: str | None = None, token: str | None = None) -> PurePosixPath:
    """Where a recording's hypothesis goes, relative to the output folder.

    - BIDS sources: their own relative path, ``_eeg.edf`` -> ``_events.tsv`` (the SzCORE convention: the hypothesis
      folder mirrors the reference).
    - TUSZ trees: ``sub-<patient>/ses-<NNN>/eeg/sub-<patient>_ses-<NNN>_task-szMonitoring_run-<TTT>_events.tsv``
      from the path's entities (``aaaaaaac/s001_2003/.../aaaaaaac_s001_t000.edf`` -> sub-aaaaaaac, ses-001,
      run-000).
    - Other folders: ``sub-<stem>/eeg/sub-<stem>_task-szMonitoring_events.tsv`` (the stem without non-alphanumerics).
    """
    if layout == "bids" and rel_path and rel_path.endswith("_eeg.edf"):
        return PurePosixPath(rel_path[: -len("_eeg.edf")] + "_events.tsv")
    if subject and session and token:
        sub, ses, run = _label(subject, "x"), _label(session.split("_")[0].lstrip("s"), "0"), _label(token.lstrip("t"), "0")
        stem = f"sub-{sub}_ses-{ses}_task-{TASK}_run-{run}"
        return PurePosixPath(f"sub-{sub}", f"ses-{ses}", "eeg", f"{stem}_events.tsv")
    sub = _label(subject or name, "x")
    return PurePosixPath(f"sub-{sub}", "eeg", f"sub-{sub}_task-{TASK}_events.tsv")


def mask_1hz(events, duration_s: float) -> np.ndarray:
    """The 1 Hz mask szcore-evaluation builds from a TSV's rows: ``int(recordingDuration)`` samples, each event
    ``[int(onset), int(onset + duration))``. ``events`` are (onset, duration, ...) rows as the TSV holds them."""
    mask = np.zeros(int(duration_s * SZCORE_FS), dtype=bool)
    for onset, length, *_ in events:
        mask[int(onset * SZCORE_FS): int((onset + length) * SZCORE_FS)] = True
    return mask


SzCounts = Counts  # timescoring's counts for one recording (or a subject's sum), events and samples at 1 Hz


def score_recording(reference: list[tuple[float, float]], hypothesis, duration_s: float) -> SzCounts:
    """Counts of one recording. ``reference``: stored (start, stop) seizure events; ``hypothesis``: detections
    (Event objects or (start, stop) pairs), scored as their TSV rows, on 1 Hz masks as szcore-evaluation does."""
    d = _r2(duration_s)
    ref = mask_1hz([(a, b - a) for a, b in reference], d)
    hyp = mask_1hz(tsv_events(hypothesis), d)
    return score_masks(ref, hyp, SZCORE_FS)


def _nan_ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def scores(counts: SzCounts) -> dict[str, float]:
    """A subject's scores as timescoring's ``computeScores`` defines them (NaN where undefined)."""
    out = {}
    days = counts.duration_s / 86400
    for kind in ("event", "sample"):
        tp, fp, ref = (getattr(counts, f"{kind}_{x}") for x in ("tp", "fp", "ref"))
        out[f"{kind}_sensitivity"] = _nan_ratio(tp, ref)
        out[f"{kind}_precision"] = _nan_ratio(tp, tp + fp)
        out[f"{kind}_f1"] = math.nan if ref + fp == 0 else 2 * tp / (2 * tp + fp + (ref - tp))
        out[f"{kind}_fp_per_24h"] = _nan_ratio(fp, days)
    return out


def _json_number(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def aggregate(per_subject: dict[str, SzCounts]) -> dict:
    """Mean and std over subjects of each subject's scores (NaN ignored; None where every subject's is NaN), the
    subject count, and each subject's counts and scores."""
    table = {s: scores(c) for s, c in per_subject.items()}
    out: dict = {"subjects": len(per_subject)}
    for kind in ("event", "sample"):
        for metric in METRICS:
            key = f"{kind}_{metric}"
            values = np.array([t[key] for t in table.values()], dtype=float)
            defined = values[~np.isnan(values)]
            out[key] = float(defined.mean()) if defined.size else None
            out[f"{key}_std"] = float(defined.std()) if defined.size else None
    out["per_subject"] = {s: {**asdict(per_subject[s]), **{k: _json_number(v) for k, v in table[s].items()}}
                          for s in sorted(per_subject)}
    return out


def subject_key(dataset: str | None, subject: str | None, name: str) -> str:
    """Who a recording belongs to for per-subject averaging: (dataset, subject); a recording without a subject
    (a plain folder) is its own subject."""
    return f"{dataset or ''}/{subject or name}"


def summarize_subjects(results) -> dict:
    """SzCORE figures from (subject key, SzCounts) pairs, in order."""
    per_subject: dict[str, SzCounts] = {}
    for key, counts in results:
        per_subject[key] = per_subject.get(key, SzCounts()) + counts
    return aggregate(per_subject)


def flat(szcore: dict) -> dict:
    """The headline per-subject figures as flat ``szcore_*`` keys (for metrics.jsonl and the CLI)."""
    return {f"szcore_{k}": v for k, v in szcore.items() if k not in ("per_subject",)}
