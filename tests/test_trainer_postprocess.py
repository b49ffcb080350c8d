"""Post-processing rules (cover, stitch, opening/closing, minimum duration, .csv_bi) and scores against timescoring."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from timescoring import scoring
from timescoring.annotations import Annotation

from eegcache.sources.annotations import parse_annotation
from trainer.metrics import EVENT_PARAMS, Counts, score_recording, summarize
from trainer.postprocess import (
    PostProcess,
    binarize,
    cover_starts,
    csv_bi,
    drop_short,
    mask_events,
    open_close,
    stitch,
)

masks = st.lists(st.booleans(), min_size=1, max_size=300).map(lambda v: np.array(v, dtype=bool))
# Runs make longer, more realistic masks than independent booleans.
run_masks = st.lists(st.tuples(st.booleans(), st.integers(1, 12)), min_size=1, max_size=40).map(
    lambda runs: np.concatenate([np.full(n, v, dtype=bool) for v, n in runs]))


def runs(mask, value=True):
    padded = np.concatenate([[not value], mask == value, [not value]]) if value else np.concatenate([[False], ~mask, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True))


@settings(max_examples=300)
@given(st.one_of(masks, run_masks), st.sampled_from([3, 5, 7]))
def test_open_close(mask, size):
    out = open_close(mask, size)
    assert out.shape == mask.shape
    ones = runs(out)
    assert all(b - a >= size for a, b in ones), "every surviving seizure run is at least `size` long"
    # every interior gap (between two detections) is at least `size` long; border gaps are left as they are
    gaps = [(a, b) for a, b in runs(out, False) if a > 0 and b < out.size]
    assert all(b - a >= size for a, b in gaps)
    # runs of the input at least `size` long and isolated by gaps at least `size` long are kept exactly
    for a, b in runs(mask):
        if b - a >= size:
            assert out[a:b].all()
    # the opening never invents seizure: outside the closing's gap filling, output ⊆ input
    opened_only = open_close(mask, size) & ~mask
    for a, b in runs(opened_only):
        assert a > 0 and b < mask.size and out[a - 1] and out[b]  # only filled gaps between detections


def test_open_close_examples():
    m = np.array([1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 1], bool)
    want = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0], bool)
    assert np.array_equal(open_close(m, 5), want)
    edge = np.ones(12, bool)
    edge[5:7] = False
    assert open_close(edge, 5).all()  # an event touching the border is not shaved by the closing
    assert np.array_equal(open_close(np.ones(6, bool), 5), np.ones(6, bool))


@given(st.one_of(masks, run_masks), st.integers(0, 20))
def test_drop_short(mask, minimum):
    out = drop_short(mask, minimum)
    assert [r for r in runs(mask) if r[1] - r[0] >= minimum] == runs(out)


@given(n=st.integers(1, 5000), window=st.integers(1, 700))
def test_cover_starts_cover_every_sample_once_on_the_grid(n, window):
    starts = cover_starts(n, window)
    if n <= window:
        assert starts.tolist() == [0]
        return
    assert starts[0] == 0 and starts[-1] + window == n or (n % window == 0 and starts[-1] + window == n)
    assert all(s + window <= n for s in starts)  # no padding needed
    grid = starts[:-1] if n % window else starts
    assert np.all(np.diff(grid) == window)  # non-overlapping on the regular grid


@given(n=st.integers(1, 3000), window=st.integers(1, 500))
def test_stitch_keeps_each_samples_own_window(n, window):
    starts = cover_starts(n, window)
    # window k predicts the value k everywhere: the result shows which window each sample came from
    probs = np.stack([np.full(window, k, np.float32) for k in range(len(starts))])
    out = stitch(probs, starts, n)
    expected = np.minimum(np.arange(n) // window, len(starts) - 1)
    assert np.array_equal(out, expected.astype(np.float32))


def test_binarize_threshold_morphology_and_min_duration():
    fs = 10.0
    probs = np.zeros(200, np.float32)
    probs[10:40] = 0.9  # 3 s: kept
    probs[60:75] = 0.95  # 1.5 s: shorter than 2 s, dropped
    probs[100:130] = 0.79  # below threshold
    probs[150:180] = 0.85
    probs[163:165] = 0.1  # 2-sample dip inside an event: closed
    probs[190:192] = 0.99  # 2-sample blip: opened away
    mask = binarize(probs, fs, PostProcess(threshold=0.8, morph_samples=5, min_event_s=2.0))
    events = mask_events(mask, fs, probs)
    assert [(e.start_s, e.stop_s) for e in events] == [(1.0, 4.0), (15.0, 18.0)]
    assert events[0].confidence == pytest.approx(0.9)


def test_csv_bi_round_trips_through_the_annotation_parser(tmp_path):
    fs = 256.0
    mask = np.zeros(int(300 * fs), bool)
    mask[int(12.5 * fs):int(40 * fs)] = True
    mask[int(100 * fs):] = True
    events = mask_events(mask, fs, mask.astype(np.float32) * 0.93)
    text = csv_bi("aaaaaaac_s001_t000", 300.0, events)
    assert text.splitlines()[:5] == ["# version = csv_v1.0.0", "# bname = aaaaaaac_s001_t000",
                                     "# duration = 300.0000 secs", "#", "channel,start_time,stop_time,label,confidence"]
    assert text.splitlines()[5] == "TERM,12.5000,40.0000,seiz,0.9300"
    path = tmp_path / "aaaaaaac_s001_t000.csv_bi"
    path.write_text(text)
    parsed = parse_annotation(path)
    assert [tuple(e) for e in parsed.events] == [(12.5, 40.0), (100.0, 300.0)]


# ----------------------------------------------------------------------------------------------------------------
# Scores


FS = 256


def mask_with(events, seconds=3600):
    m = np.zeros(seconds * FS, bool)
    for a, b in events:
        m[int(a * FS):int(b * FS)] = True
    return m


def test_perfect_prediction():
    ref = mask_with([(100, 130), (1000, 1060), (3000, 3020)])
    m = summarize(score_recording(ref, ref.copy(), FS))
    assert m["event_sensitivity"] == 1 and m["event_precision"] == 1 and m["event_f1"] == 1
    assert m["event_fp_per_24h"] == 0 and m["sample_f1"] == 1


def test_all_zero_prediction():
    ref = mask_with([(100, 130), (1000, 1060)])
    m = summarize(score_recording(ref, np.zeros_like(ref), FS))
    assert m["event_sensitivity"] == 0 and m["event_f1"] == 0 and m["event_fp_per_24h"] == 0
    assert m["event_precision"] is None  # no detection: undefined, not NaN


def test_all_one_prediction_has_low_precision():
    ref = mask_with([(100, 130)])
    m = summarize(score_recording(ref, np.ones_like(ref), FS))
    assert m["event_sensitivity"] == 1
    assert m["event_precision"] < 0.2  # a 1 h alarm is split into 5-min events: 1 TP, 11 FP
    assert m["event_fp_per_24h"] == pytest.approx(11 * 24)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3500), st.integers(3, 400)), max_size=5),
       st.lists(st.tuples(st.integers(0, 3500), st.integers(1, 400)), max_size=8))
def test_single_recording_scores_equal_timescoring(ref_events, hyp_events):
    ref = mask_with([(a, min(a + d, 3600)) for a, d in ref_events])
    hyp = mask_with([(a, min(a + d, 3600)) for a, d in hyp_events])
    counts = score_recording(ref, hyp, FS)
    ours = summarize(counts)
    r, h = Annotation(ref, FS), Annotation(hyp, FS)
    event = scoring.EventScoring(r, h, scoring.EventScoring.Parameters(**EVENT_PARAMS))
    sample = scoring.SampleScoring(r, h)
    assert (counts.event_tp, counts.event_fp, counts.event_ref) == (event.tp, event.fp, event.refTrue)
    assert (counts.sample_tp, counts.sample_fp, counts.sample_ref) == (sample.tp, sample.fp, sample.refTrue)
    for ours_key, theirs in (("event_sensitivity", event.sensitivity), ("event_precision", event.precision),
                             ("event_f1", event.f1), ("event_fp_per_24h", event.fpRate)):
        if ours[ours_key] is None:
            assert np.isnan(theirs)
        else:
            assert ours[ours_key] == pytest.approx(theirs)


def test_aggregation_sums_counts_before_dividing():
    a = score_recording(mask_with([(100, 130)]), mask_with([(100, 130), (2000, 2030)]), FS)  # 1 TP, 1 FP
    b = score_recording(mask_with([(50, 80), (2000, 2100)], 7200), np.zeros(7200 * FS, bool), FS)  # 0 TP of 2
    total = summarize(a + b)
    assert total["event_sensitivity"] == pytest.approx(1 / 3)
    assert total["event_precision"] == pytest.approx(1 / 2)
    assert total["event_f1"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 2))
    assert total["event_fp_per_24h"] == pytest.approx(1 / 3 * 24)
    assert total["recordings"] == 2 and total["hours"] == pytest.approx(3)
    assert isinstance(a + b, Counts)
