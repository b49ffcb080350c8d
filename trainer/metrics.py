"""Event and sample scores as the field reports them (SzCORE, the ``timescoring`` package), summed over recordings.

Scores are computed per recording by timescoring and aggregated by summing counts (true positives, false positives,
reference events, duration) before dividing, so long and short recordings weigh by their content, as SzCORE does.
Undefined ratios (no reference event, no detection) are ``None`` rather than NaN so they survive JSON.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from timescoring import scoring
from timescoring.annotations import Annotation

# SzCORE event scoring: any overlap counts, 30 s tolerance before and 60 s after an event, events closer than 90 s
# merged, events longer than 5 min split.
EVENT_PARAMS = dict(toleranceStart=30, toleranceEnd=60, minOverlap=0, maxEventDuration=300, minDurationBetweenEvents=90)


@dataclass
class Counts:
    """What timescoring counted for one recording (or a sum of them)."""

    event_tp: int = 0
    event_fp: int = 0
    event_ref: int = 0
    sample_tp: int = 0
    sample_fp: int = 0
    sample_ref: int = 0
    duration_s: float = 0.0
    recordings: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(*(a + b for a, b in zip(asdict(self).values(), asdict(other).values(), strict=True)))


def _fs(fs: float) -> float | int:
    return int(fs) if float(fs).is_integer() else float(fs)


def score_recording(reference: np.ndarray, hypothesis: np.ndarray, fs: float) -> Counts:
    """timescoring's event and sample scores for one recording's boolean masks (same length, same rate)."""
    reference = np.asarray(reference, dtype=bool)
    hypothesis = np.asarray(hypothesis, dtype=bool)
    if reference.shape != hypothesis.shape:
        raise ValueError(f"reference ({reference.shape}) and hypothesis ({hypothesis.shape}) differ in length")
    duration = reference.size / fs
    if reference.size == 0:
        return Counts(recordings=1)
    ref, hyp = Annotation(reference, _fs(fs)), Annotation(hypothesis, _fs(fs))
    event = scoring.EventScoring(ref, hyp, scoring.EventScoring.Parameters(**EVENT_PARAMS))
    sample = scoring.SampleScoring(ref, hyp)
    return Counts(int(event.tp), int(event.fp), int(event.refTrue), int(sample.tp), int(sample.fp),
                  int(sample.refTrue), duration, 1)


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def summarize(counts: Counts) -> dict[str, float | int | None]:
    """Sensitivity, precision, F1 and false positives per 24 h, for events and for samples (1 Hz, timescoring's
    default), from summed counts."""
    out: dict[str, float | int | None] = {}
    for kind in ("event", "sample"):
        tp, fp, ref = (getattr(counts, f"{kind}_{x}") for x in ("tp", "fp", "ref"))
        sens, prec = _ratio(tp, ref), _ratio(tp, tp + fp)
        out[f"{kind}_sensitivity"] = sens
        out[f"{kind}_precision"] = prec
        out[f"{kind}_f1"] = _ratio(2 * tp, 2 * tp + fp + (ref - tp))
        out[f"{kind}_fp_per_24h"] = fp / counts.duration_s * 86400 if counts.duration_s > 0 else None
    out.update(event_tp=counts.event_tp, event_fp=counts.event_fp, event_ref=counts.event_ref,
               recordings=counts.recordings, hours=counts.duration_s / 3600)
    return out


def f1_key(metrics: dict | None) -> float:
    """Event F1 for choosing the best checkpoint; undefined counts as worse than any defined value."""
    value = (metrics or {}).get("event_f1")
    return -1.0 if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
