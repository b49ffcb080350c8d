"""Stateful model test (issue 5): a hypothesis RuleBasedStateMachine over ingest / ingest at a new stride /
delete a source file / modify an annotation / touch the sources / gc --grace 0 / verify / SIGKILL a real ingest.

The model is deliberately simple: per source path, the content of its files on disk (duration, seizure events or
a broken annotation, and a version bumped at every change), and what the index registered for it: that content
and the window sets (strides) it has windows for. Expected ``window_labels`` rows come from ``edf_factory``'s
literal label rule, not from the library.

The library's documented behaviour, as the model encodes it: an ingest at stride R prepares a file that is new,
changed (size/mtime: a touched file with the same bytes counts), failed before, or lacks R's windows, and gives
it windows for EVERY window set that exists; an unchanged file that has R's windows is left alone; a deleted
source keeps its recording; a failed recording has no windows. A SIGKILLed ingest may have registered any subset
of what a complete run would: the model then holds both candidates for each file, and the next successful ingest
must collapse every present file back to exactly one (a killed run changes nothing the model can see
afterwards). After EVERY step: the rows of each recording are one of its candidates, windows only belong to
ingested recordings whose object files are complete, there are no duplicate rows, and ``verify`` passes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from edf_factory import FS, Rec, expected_mask, expected_windows, object_dirs, query, write_csv_bi, write_rec
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from test_crash_concurrency import _check_invariants, _kill, _start

from eegcache.gc import gc
from eegcache.index.db import open_index
from eegcache.ingest import ingest
from eegcache.spec import IngestConfig
from eegcache.verify import verify

WINDOW_S = 60.0
DEFAULT_STRIDE = 60.0
NEW_STRIDES = (30.0, 45.0, 20.0)
RECS = (
    Rec("train", "aaaaaaia", 1, 2003, "01_tcp_ar", 0, fs=250, duration_s=60, events=((10.0, 30.0),), seed=81),
    Rec("train", "aaaaaaia", 1, 2003, "01_tcp_ar", 1, fs=256, duration_s=120, seed=82),
    Rec("dev", "aaaaaaib", 1, 2004, "02_tcp_le", 0, fs=400, duration_s=180, events=((0.0, 60.0), (150.0, 185.0)),
        seed=83),
    Rec("eval", "aaaaaaic", 1, 2005, "01_tcp_ar", 0, fs=512, duration_s=90, events=((45.5, 90.0),), seed=84),
)  # fmt: skip
BROKEN = "broken"
COUNTS: Counter = Counter()  # steps and outcomes over every run in this session (RELIABILITY.md figures)


@dataclass(frozen=True)
class OnDisk:
    version: int
    duration_s: int
    events: tuple[tuple[float, float], ...] | str  # or BROKEN: an annotation the parser refuses


@dataclass(frozen=True)
class Registered:
    """What the index holds for one path: the content it was made from (None: never registered) and the strides
    it has windows for (empty when failed)."""

    version: int | None
    duration_s: int
    events: tuple[tuple[float, float], ...] | str | None
    strides: frozenset[float]

    @property
    def failed(self) -> bool:
        return self.events == BROKEN


NEVER = Registered(None, 0, None, frozenset())


def after_ingest(reg: Registered, disk: OnDisk | None, stride: float, sets: frozenset[float]) -> Registered:
    """What one complete ingest at ``stride`` (with window sets ``sets`` existing) leaves for one path."""
    if disk is None:  # not discovered: untouched
        return reg
    unchanged = reg.version == disk.version and not reg.failed and reg.events is not None
    if unchanged and stride in reg.strides:
        return reg
    strides = frozenset() if disk.events == BROKEN else sets
    return Registered(disk.version, disk.duration_s, disk.events, strides)


def expected_rows(name: str, reg: Registered) -> list[tuple]:
    if reg.events is None or reg.failed:
        return []
    mask = expected_mask(reg.events, int(reg.duration_s * FS))
    return sorted((name, WINDOW_S, stride, round(start, 6), label)
                  for stride in reg.strides for start, label, _ in expected_windows(mask, WINDOW_S, stride))


events_strategy = st.lists(
    st.tuples(st.integers(0, 380), st.integers(1, 120)).map(lambda t: (t[0] / 2, t[0] / 2 + t[1] / 2)),
    max_size=3,
).map(tuple)


class CacheMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.base = Path(tempfile.mkdtemp(prefix="eegcache-sm-"))
        self.root, self.cache = self.base / "src", self.base / "cache"
        self.edfs: dict[str, Path] = {}
        self.names: dict[str, str] = {}
        self.disk: dict[str, OnDisk | None] = {}
        self.model: dict[str, frozenset[Registered]] = {}
        for rec in RECS:
            edf = write_rec(self.root, rec)
            key = str(edf)
            self.edfs[key], self.names[key] = edf, rec.stem
            self.disk[key] = OnDisk(0, rec.duration_s, tuple(rec.events))
            self.model[key] = frozenset([NEVER])
        self.sets: frozenset[float] = frozenset()
        self.version = 0

    def teardown(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)

    # --- rules ---------------------------------------------------------------------------------------------

    def _ingest(self, stride: float) -> None:
        summary = ingest(self.root, self.cache, IngestConfig(stride_s=stride), progress=False)
        sets = self.sets | {stride}
        broken = {p for p, d in self.disk.items() if d is not None and d.events == BROKEN}
        assert {p for p, _ in summary.failures} == broken, summary.failures
        for path, disk in self.disk.items():
            self.model[path] = frozenset(after_ingest(r, disk, stride, sets) for r in self.model[path])
            if disk is not None:  # a killed run changes nothing the model can see after a successful ingest
                assert len(self.model[path]) == 1, (path, self.model[path])
        self.sets = sets
        COUNTS["ingest"] += 1

    @rule()
    def ingest_default_stride(self) -> None:
        self._ingest(DEFAULT_STRIDE)

    @rule(stride=st.sampled_from(NEW_STRIDES))
    def ingest_new_stride(self, stride: float) -> None:
        self._ingest(stride)

    @precondition(lambda self: any(d is not None for d in self.disk.values()))
    @rule(data=st.data())
    def delete_source(self, data: st.DataObject) -> None:
        path = data.draw(st.sampled_from(sorted(p for p, d in self.disk.items() if d is not None)))
        edf = self.edfs[path]
        edf.unlink()
        edf.with_suffix(".csv_bi").unlink()
        self.disk[path] = None
        COUNTS["delete"] += 1

    @precondition(lambda self: any(d is not None for d in self.disk.values()))
    @rule(data=st.data(), events=st.one_of(events_strategy, st.just(BROKEN)))
    def modify_annotation(self, data: st.DataObject, events) -> None:
        path = data.draw(st.sampled_from(sorted(p for p, d in self.disk.items() if d is not None)))
        old = self.disk[path]
        assert old is not None
        ann = self.edfs[path].with_suffix(".csv_bi")
        before = ann.stat().st_mtime_ns
        if events == BROKEN:
            ann.write_text("# duration = 60.00 secs\nchan,begin,end,what,conf\nTERM,1.0,2.0,seiz,1.0\n")
        else:
            write_csv_bi(ann, events, old.duration_s)
        stamp = max(time.time_ns(), before + 1_000_000)  # a change the size/mtime check cannot miss
        os.utime(ann, ns=(stamp, stamp))
        self.version += 1
        self.disk[path] = OnDisk(self.version, old.duration_s, events)
        COUNTS["modify"] += 1

    @precondition(lambda self: any(d is not None for d in self.disk.values()))
    @rule()
    def touch_sources(self) -> None:
        """New mtimes, same bytes: the next ingest re-hashes every file (work for a run that gets killed)."""
        self.version += 1
        for path, disk in self.disk.items():
            if disk is not None:
                stamp = max(time.time_ns(), self.edfs[path].stat().st_mtime_ns + 1_000_000)
                os.utime(self.edfs[path], ns=(stamp, stamp))
                self.disk[path] = OnDisk(self.version, disk.duration_s, disk.events)
        COUNTS["touch"] += 1

    @rule()
    def collect_garbage(self) -> None:
        if not (self.cache / "index.sqlite").exists():
            return
        engine = open_index(self.cache)
        try:
            gc(engine, self.cache, grace_s=0)
        finally:
            engine.dispose()
        referenced = {k for (k,) in query(self.cache, "SELECT object_key FROM recordings WHERE object_key IS NOT NULL")}
        assert object_dirs(self.cache) == referenced
        COUNTS["gc"] += 1

    @rule()
    def run_verify(self) -> None:
        self._verify()
        COUNTS["verify"] += 1

    @precondition(lambda self: bool(self.sets))
    @rule(data=st.data(), delay=st.floats(0.2, 2.5))
    def kill_an_ingest(self, data: st.DataObject, delay: float) -> None:
        """A real ``eegcache ingest`` at an existing stride, SIGKILLed (with its workers) after ``delay``."""
        stride = data.draw(st.sampled_from(sorted(self.sets)))
        proc = _start(self.root, self.cache, "--stride", f"{stride:g}", log=self.base / f"kill{COUNTS['kill']}")
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            _kill(proc)
            COUNTS["kill_landed"] += 1
        else:
            assert proc.returncode in (0, 1)
        for path, disk in self.disk.items():  # any subset of what a complete run does
            self.model[path] = self.model[path] | {after_ingest(r, disk, stride, self.sets) for r in self.model[path]}
        COUNTS["kill"] += 1

    # --- invariants ----------------------------------------------------------------------------------------

    def _verify(self) -> None:
        if not (self.cache / "index.sqlite").exists():
            return
        engine = open_index(self.cache)
        try:
            report = verify(engine, self.cache)
        finally:
            engine.dispose()
        assert report.ok, [str(p) for p in report.problems]

    @invariant()
    def index_matches_the_model(self) -> None:
        if not (self.cache / "index.sqlite").exists():
            assert all(m == frozenset([NEVER]) for m in self.model.values()) or COUNTS["kill"]
            return
        _check_invariants(self.cache)
        rows = query(self.cache, """SELECT r.source_path, w.recording, w.window_s, w.stride_s, w.start_s, w.label
                                    FROM window_labels w JOIN windows x ON x.id = w.window_id
                                    JOIN recordings r ON r.id = x.recording_id""")
        actual: dict[str, list[tuple]] = {p: [] for p in self.model}
        for path, name, window_s, stride_s, start_s, label in rows:
            assert path in actual, path
            actual[path].append((name, window_s, stride_s, round(start_s, 6), label))
        for path, candidates in self.model.items():
            options = [expected_rows(self.names[path], reg) for reg in candidates]
            assert sorted(actual[path]) in options, (self.names[path], len(actual[path]), [len(o) for o in options])
        self._verify()
        COUNTS["checks"] += 1


def run_machine(max_examples: int, steps: int) -> None:
    run_state_machine_as_test(CacheMachine, settings=settings(
        max_examples=max_examples, stateful_step_count=steps, deadline=None, derandomize=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))


def test_state_machine() -> None:
    """The default run: short programs (about 30 s on two cores)."""
    before = Counter(COUNTS)
    run_machine(max_examples=30, steps=12)
    print(f"\nFIGURES test_state_machine: {dict(COUNTS - before)}, 0 inconsistencies")


@pytest.mark.stress
def test_state_machine_stress() -> None:
    before = Counter(COUNTS)
    run_machine(max_examples=150, steps=30)
    done = COUNTS - before
    print(f"\nFIGURES test_state_machine_stress: {dict(done)}, 0 inconsistencies")


def test_the_model_follows_the_documented_rules() -> None:
    """The model's own rules, on a hand-written history (so a wrong model cannot pass the machine by luck)."""
    disk = OnDisk(0, 120, ((10.0, 30.0),))
    first = after_ingest(NEVER, disk, 60.0, frozenset({60.0}))
    assert first == Registered(0, 120, ((10.0, 30.0),), frozenset({60.0}))
    assert after_ingest(first, disk, 60.0, frozenset({60.0})) is first  # unchanged: untouched
    both = after_ingest(first, disk, 30.0, frozenset({60.0, 30.0}))
    assert both.strides == {60.0, 30.0}  # a new stride: every existing window set
    assert after_ingest(both, None, 45.0, frozenset({60.0, 30.0, 45.0})) is both  # a deleted source is kept
    broken = after_ingest(both, OnDisk(1, 120, BROKEN), 60.0, frozenset({60.0, 30.0}))
    assert broken.failed and expected_rows("x", broken) == []
    rows = expected_rows("x", both)
    assert len(rows) == 2 + 3 and ("x", 60.0, 30.0, 0.0, "partial_seizure") in rows
