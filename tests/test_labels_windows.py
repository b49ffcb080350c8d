"""Tests for eegcache.pipeline.labels and eegcache.pipeline.windows: exact boundaries, brute-force properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from eegcache.pipeline.labels import clip_events, label_mask, merge_events
from eegcache.pipeline.windows import LABELS, label_codes, seconds_to_samples, seizure_counts, window_starts

RATES = [250, 256, 400, 512, 1000, 200.5]


def brute_mask(events: list[tuple[float, float]], n: int, fs: float) -> np.ndarray:
    """The contract, literally: sample i is seizure iff some start <= i/fs < stop."""
    return np.array([any(s <= i / fs < e for s, e in events) for i in range(n)], dtype=np.uint8)


def covered(events: tuple[tuple[float, float], ...] | list[tuple[float, float]], x: float) -> bool:
    return any(s <= x < e for s, e in events)


# --- merge_events -----------------------------------------------------------------------------


def test_merge_examples() -> None:
    assert merge_events([]) == ()
    assert merge_events([(5.0, 6.0), (1.0, 2.0)]) == ((1.0, 2.0), (5.0, 6.0))
    assert merge_events([(1.0, 2.0), (2.0, 3.0)]) == ((1.0, 3.0),)  # touching
    assert merge_events([(1.0, 10.0), (2.0, 3.0), (9.0, 12.0)]) == ((1.0, 12.0),)  # contained + overlapping
    assert merge_events([(4.0, 4.0), (5.0, 3.0)]) == ()  # empty intervals dropped
    assert merge_events(iter([(0, 1)])) == ((0.0, 1.0),)
    assert all(type(x) is float for ev in merge_events([(0, 1)]) for x in ev)


def test_merge_rejects_nan() -> None:
    with pytest.raises(ValueError, match="NaN"):
        merge_events([(math.nan, 1.0)])


finite = st.floats(min_value=-100, max_value=1000, allow_nan=False, allow_infinity=False)
quarter = st.integers(-40, 400).map(lambda k: k / 4)  # many exact ties and touching ends
endpoint = st.one_of(finite, quarter)
interval_lists = st.lists(st.tuples(endpoint, endpoint), max_size=30)


@settings(max_examples=300, deadline=None)
@given(events=interval_lists)
def test_merge_properties(events: list[tuple[float, float]]) -> None:
    merged = merge_events(events)
    assert merge_events(merged) == merged  # idempotent
    assert all(s < e for s, e in merged)
    assert all(
        merged[i][1] < merged[i + 1][0] for i in range(len(merged) - 1)
    )  # sorted, disjoint, not touching
    probes = {x for ev in events for x in ev} | {(s + e) / 2 for s, e in events}
    probes |= {x for ev in merged for x in ev} | {math.nextafter(x, -math.inf) for ev in events for x in ev}
    for x in probes:
        assert covered(events, x) == covered(merged, x), x


# --- clip_events ------------------------------------------------------------------------------


def test_clip_messages() -> None:
    events = [(10.0, 20.0), (590.0, 640.0), (700.0, 710.0), (-3.0, 2.0), (-5.0, -1.0)]
    clipped, warnings = clip_events(events, 601.0)
    assert clipped == ((0.0, 2.0), (10.0, 20.0), (590.0, 601.0))
    assert "seizure 590.0–640.0 s ends after the recording (601.0 s); clipped" in warnings
    assert "seizure 700.0–710.0 s starts at or after the end of the recording (601.0 s); dropped" in warnings
    assert "seizure -3.0–2.0 s starts before the recording; clipped to 0.0 s" in warnings
    assert "seizure -5.0–-1.0 s lies wholly before the start of the recording; dropped" in warnings
    assert len(warnings) == 4


def test_clip_no_warnings_inside_and_at_end() -> None:
    assert clip_events([(0.0, 601.0), (3.0, 3.0)], 601.0) == (((0.0, 601.0),), [])
    clipped, warnings = clip_events([(-1.0, 700.0)], 601.0)
    assert clipped == ((0.0, 601.0),)
    assert warnings == ["seizure -1.0–700.0 s starts before and ends after the recording (601.0 s); clipped"]
    assert clip_events([(21.1212, 37.0)], 30.0)[1] == [
        "seizure 21.1212–37.0 s ends after the recording (30.0 s); clipped"
    ]


@pytest.mark.parametrize("duration", [-1.0, math.nan, math.inf])
def test_clip_rejects_bad_duration(duration: float) -> None:
    with pytest.raises(ValueError, match="duration_s"):
        clip_events([(0.0, 1.0)], duration)


@settings(max_examples=300, deadline=None)
@given(
    events=interval_lists,
    duration=st.one_of(st.just(0.0), quarter.filter(lambda d: d >= 0), finite.filter(lambda d: d >= 0)),
)
def test_clip_properties(events: list[tuple[float, float]], duration: float) -> None:
    clipped, warnings = clip_events(events, duration)
    assert all(0 <= s < e <= duration for s, e in clipped)
    assert merge_events(clipped) == clipped
    nonempty = [(s, e) for s, e in events if e > s]
    assert len(warnings) == sum(1 for s, e in nonempty if s < 0 or e > duration)
    for x in {x for ev in events for x in ev} | {x for ev in clipped for x in ev} | {0.0, duration}:
        assert covered(clipped, x) == (0 <= x < duration and covered(events, x)), x


# --- label_mask -------------------------------------------------------------------------------


@pytest.mark.parametrize("fs", RATES)
def test_mask_boundaries_on_samples(fs: float) -> None:
    n = 3000
    start, stop = 1000 / fs, 2000 / fs
    mask = label_mask([(start, stop)], n, fs)
    assert mask.dtype == np.uint8 and mask.shape == (n,)
    assert mask[999] == 0 and mask[1000] == 1 and mask[1999] == 1 and mask[2000] == 0
    assert mask.sum() == 1000
    np.testing.assert_array_equal(mask, brute_mask([(start, stop)], n, fs))


def test_mask_examples() -> None:
    assert label_mask([], 5, 256).tolist() == [0] * 5
    assert label_mask([(0, 1)], 0, 256).shape == (0,)
    assert label_mask([(0.0, 0.01)], 4, 256).tolist() == [1, 1, 1, 0]  # 2/256 < 0.01 < 3/256
    assert label_mask([(-5.0, math.inf)], 4, 256).tolist() == [1, 1, 1, 1]
    assert label_mask([(2.0, 1.0)], 4, 1).tolist() == [0] * 4
    assert label_mask([(1.0, 2.0), (1.5, 3.0)], 5, 1).tolist() == [0, 1, 1, 0, 0]
    assert label_mask([(10.0, 20.0)], 5, 1).tolist() == [0] * 5


@pytest.mark.parametrize("fs", [0, -1, math.nan, math.inf])
def test_mask_rejects_bad_fs(fs: float) -> None:
    with pytest.raises(ValueError, match="fs"):
        label_mask([(0.0, 1.0)], 10, fs)


@st.composite
def mask_case(draw: st.DrawFn) -> tuple[list[tuple[float, float]], int, float]:
    fs = draw(st.sampled_from(RATES))
    n = draw(st.integers(0, 600))
    horizon = (n + 5) / fs
    on_sample = st.integers(-3, n + 5).map(lambda k: k / fs)  # exactly i/fs: the boundary case
    near_sample = st.tuples(st.integers(0, n + 5), st.sampled_from([-1, 1])).map(
        lambda t: math.nextafter(t[0] / fs, t[1] * math.inf)
    )
    decimal = st.integers(0, int(horizon * 10_000) + 1).map(
        lambda k: k / 10_000
    )  # 4-decimal annotation times
    anywhere = st.floats(-1.0, horizon + 1.0, allow_nan=False)
    point = st.one_of(on_sample, near_sample, decimal, anywhere)
    events = draw(st.lists(st.tuples(point, point), max_size=12))
    return events, n, fs


@settings(max_examples=400, deadline=None)
@given(case=mask_case())
def test_mask_matches_brute_force(case: tuple[list[tuple[float, float]], int, float]) -> None:
    events, n, fs = case
    np.testing.assert_array_equal(label_mask(events, n, fs), brute_mask(events, n, fs))


def test_mask_of_one_hour_with_500_overlapping_events() -> None:
    rng = np.random.default_rng(0)
    fs, n = 256, 3600 * 256
    starts = rng.uniform(0, 3600, 500)
    events = np.column_stack([starts, starts + rng.uniform(1, 60, 500)])
    mask = label_mask(events, n, fs)
    first = np.ceil(events * fs).astype(np.int64)  # fs = 256: start*fs is exact
    expected = np.zeros(n + 1, np.int64)
    for a, b in first:
        expected[min(a, n) : min(b, n)] = 1
    np.testing.assert_array_equal(mask, expected[:n])


# --- windows ----------------------------------------------------------------------------------


def test_labels_order() -> None:
    assert LABELS == ("no_seizure", "partial_seizure", "full_seizure")


def test_window_examples() -> None:
    assert window_starts(10, 4, 3).tolist() == [0, 3, 6]
    assert window_starts(10, 10, 1).tolist() == [0]
    assert window_starts(9, 10, 1).tolist() == []
    assert window_starts(0, 1, 1).dtype == np.int64
    for bad in [(10, 0, 1), (10, 1, 0), (-1, 1, 1)]:
        with pytest.raises(ValueError):
            window_starts(*bad)


@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 5000), window=st.integers(1, 600), stride=st.integers(1, 600))
def test_window_starts_definition(n: int, window: int, stride: int) -> None:
    starts = window_starts(n, window, stride)
    assert starts.dtype == np.int64
    if n < window:
        assert starts.size == 0
        return
    assert starts[0] == 0
    assert np.all(np.diff(starts) == stride)
    assert starts[-1] + window <= n
    assert starts[-1] + stride + window > n  # no further full window fits


@st.composite
def count_case(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int]:
    n = draw(st.integers(1, 400))
    mask = np.array(draw(st.lists(st.sampled_from([0, 1]), min_size=n, max_size=n)), dtype=np.uint8)
    if draw(st.booleans()):  # long runs, so full-seizure windows actually occur
        mask[: draw(st.integers(0, n))] = 1
    window = draw(st.integers(1, n))
    starts = window_starts(n, window, draw(st.integers(1, 50)))
    return mask, starts, window


@settings(max_examples=300, deadline=None)
@given(case=count_case())
def test_counts_and_codes_match_brute_force(case: tuple[np.ndarray, np.ndarray, int]) -> None:
    mask, starts, window = case
    counts = seizure_counts(mask, starts, window)
    assert counts.tolist() == [int(mask[s : s + window].sum()) for s in starts]
    codes = label_codes(counts, window)
    assert codes.dtype == np.int8
    for c, code in zip(counts.tolist(), codes.tolist(), strict=True):
        fraction = c / window
        assert LABELS[code] == (
            "no_seizure" if fraction == 0 else "full_seizure" if fraction == 1 else "partial_seizure"
        )


def test_counts_reject_out_of_range() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        seizure_counts(np.zeros(10, np.uint8), np.array([8]), 4)
    with pytest.raises(ValueError):
        label_codes(np.array([5]), 4)


def test_counts_of_every_one_sample_stride_window_of_an_hour() -> None:
    mask = (np.random.default_rng(1).random(3600 * 256) < 0.1).astype(np.uint8)
    starts = window_starts(mask.size, 15360, 1)
    counts = seizure_counts(mask, starts, 15360)
    assert counts[0] == mask[:15360].sum() and counts[-1] == mask[-15360:].sum()
    middle = starts.size // 2
    assert counts[middle] == mask[starts[middle]:starts[middle] + 15360].sum()


# --- seconds_to_samples -----------------------------------------------------------------------


def test_seconds_to_samples_examples() -> None:
    assert seconds_to_samples(60, 256) == 15360
    assert seconds_to_samples(0.1, 250) == 25
    assert seconds_to_samples(2, 200.5) == 401
    for seconds, fs, match in [
        (0.001, 256, "not a whole positive number"),
        (1, 200.5, "not a whole positive number"),
        (0.0001, 250, "not a whole positive number"),
        (0, 256, "seconds must be finite and positive"),
        (-1, 256, "seconds must be finite and positive"),
        (math.nan, 256, "seconds must be finite and positive"),
        (math.inf, 256, "seconds must be finite and positive"),
        (1, 0, "fs must be finite and positive"),
    ]:
        with pytest.raises(ValueError, match=match):
            seconds_to_samples(seconds, fs)


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 10**7), fs=st.sampled_from(RATES))
def test_seconds_to_samples_round_trip(n: int, fs: float) -> None:
    assert seconds_to_samples(n / fs, fs) == n


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 10**6), fs=st.sampled_from(RATES), frac=st.floats(0.001, 0.999))
@example(n=10**6, fs=250, frac=0.999)  # passed the old 1e-9 relative tolerance
def test_seconds_to_samples_rejects_fractions(n: int, fs: float, frac: float) -> None:
    with pytest.raises(ValueError):
        seconds_to_samples((n + frac) / fs, fs)
