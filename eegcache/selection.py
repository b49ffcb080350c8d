"""A selection of windows: one window set of one pipeline, optionally one split, one dataset and a user condition.

``Cache.windows(...)`` returns one. It has one order, the same everywhere: ascending window id. ``sel.ids[i]``,
row i of ``sel.to_pandas()``, ``WindowDataset(sel)[i]`` and index i of ``BalancedSampler(sel)`` mean one window.

The ids and label codes come from one indexed query, moved out of the database as one string (``group_concat`` on
SQLite, ``string_agg`` on PostgreSQL) and parsed by numpy: 10 M windows in about a second. A user's ``where`` is
SQL text over the public ``window_labels`` view and runs only through the read-only reader of
``eegcache.index.query`` (SQLite ``mode=ro`` + authorizer; PostgreSQL as the unprivileged ``eegcache_reader``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import Engine, String, cast, func, select, text
from sqlalchemy.exc import DataError, OperationalError

from eegcache.errors import InputError
from eegcache.index.models import Dataset, Recording, Window, WindowSet
from eegcache.pipeline.names import PipelineError, choose_pipeline
from eegcache.pipeline.windows import LABELS


class SelectionError(InputError):
    """The windows cannot be selected as asked; the message says why, with what exists."""


class WhereError(SelectionError):
    """The user's ``where`` condition was refused (it may only read ``window_labels``) or is not valid SQL."""


@dataclass(frozen=True)
class WindowSetInfo:
    id: int
    window_s: float
    stride_s: float
    fs: float
    window_samples: int
    stride_samples: int
    pipeline_id: int = 0
    pipeline: str = ""


def pipeline_of(conn, name: str | None, where: str = "the cache", *, required: bool = True) -> tuple[int, str] | None:
    """(id, name) of the named pipeline, or of the only one; refuses with the list when there are several, and when
    there is none (unless not ``required``: then None)."""
    try:
        chosen = choose_pipeline(conn, name)
    except PipelineError as exc:
        raise SelectionError(str(exc)) from None
    if chosen is None and required:
        raise SelectionError(f"{where} holds no pipeline yet (nothing has been ingested); run eegcache ingest")
    return chosen


def find_window_set(conn, name: str | None, window_s: float, stride_s: float, where: str = "the cache") -> WindowSetInfo:
    """The window set of (pipeline, window, stride); refuses with the window sets that exist and how to add it."""
    pid, pname = pipeline_of(conn, name, where)
    rows = conn.execute(select(WindowSet.id, WindowSet.window_s, WindowSet.stride_s, WindowSet.fs,
                               WindowSet.window_samples, WindowSet.stride_samples)
                        .where(WindowSet.pipeline_id == pid).order_by(WindowSet.id)).all()
    for r in rows:
        if math.isclose(r.window_s, window_s, abs_tol=1e-9) and math.isclose(r.stride_s, stride_s, abs_tol=1e-9):
            return WindowSetInfo(*r, pid, pname)
    counts = dict(conn.execute(select(Window.window_set_id, func.count()).group_by(Window.window_set_id)).all())
    listing = "; ".join(f"{r.window_s:g} s windows at {r.stride_s:g} s stride, {r.fs:g} Hz "
                        f"({counts.get(r.id, 0):,} windows)" for r in rows) or "none (nothing has been ingested)"
    raise SelectionError(
        f"no window set of {window_s:g} s windows at {stride_s:g} s stride in pipeline {pname!r} of {where}. "
        f"Window sets that exist: {listing}. Add it from the stored masks (no EDF is re-read) with "
        f"eegcache ingest SRC --cache CACHE --pipeline {pname} --window {window_s:g} --stride {stride_s:g}")


def _packed(conn, stmt) -> np.ndarray:
    """``id * 4 + label`` of every row of ``stmt`` as int64, through one aggregated string."""
    inner = stmt.subquery()
    value = inner.c.id * 4 + inner.c.label
    if conn.dialect.name == "postgresql":
        agg = func.string_agg(cast(value, String), ",")
    else:
        agg = func.group_concat(value)
    try:
        blob = conn.execute(select(agg)).scalar()
        return np.fromstring(blob, dtype=np.int64, sep=",") if blob else np.empty(0, dtype=np.int64)
    except (DataError, OperationalError):  # past the string limit (~100 M ids on SQLite): iterate the rows
        return np.fromiter((i * 4 + lab for i, lab in conn.execute(stmt)), dtype=np.int64)


class WindowSelection:
    """Window ids (int64, ascending) and their label codes (int8: 0 no_seizure, 1 partial, 2 full)."""

    def __init__(self, engine: Engine, *, index: str | Path, window_s: float = 60.0, stride_s: float = 60.0,
                 split: str | None = None, pipeline: str | None = None, dataset: str | None = None,
                 where: str | None = None, params: Mapping[str, object] | None = None, name: str = "the cache",
                 store: tuple[Path, str | None] | None = None) -> None:
        self.engine, self.index = engine, index
        self.store_location = store  # (cache folder, store URL): where WindowDataset reads the objects
        self.split, self.dataset, self.where, self.params = split, dataset, where, dict(params or {})
        with engine.connect() as conn:
            self.window_set = find_window_set(conn, pipeline, window_s, stride_s, name)
            stmt = select(Window.id, Window.label).where(Window.window_set_id == self.window_set.id)
            if split is not None or dataset is not None:
                stmt = stmt.join(Recording, Recording.id == Window.recording_id)
            if split is not None:
                stmt = stmt.where(Recording.split == split)
            if dataset is not None:
                ds = conn.execute(select(Dataset.id).where(Dataset.name == dataset)).scalar_one_or_none()
                if ds is None:
                    names = ", ".join(conn.execute(select(Dataset.name).order_by(Dataset.name)).scalars()) or "none"
                    raise SelectionError(f"no dataset named {dataset!r} in {name}; datasets: {names}")
                stmt = stmt.where(Recording.dataset_id == ds)
            packed = np.sort(_packed(conn, stmt))
        ids, codes = packed >> 2, (packed & 3).astype(np.int8)
        if where is not None and where.strip():
            keep = np.isin(ids, self._where_ids(where))
            ids, codes = ids[keep], codes[keep]
        self.ids: np.ndarray = ids
        self.codes: np.ndarray = codes

    def _where_ids(self, where: str) -> np.ndarray:
        from eegcache.index.query import QueryError, run_query

        for key in self.params:
            if key.startswith("_"):
                raise WhereError(f"parameter {key}: names starting with '_' are reserved")
        # The user's text stands alone on its lines inside parentheses, so a trailing "--" comment ends there.
        sql = (f"SELECT window_id FROM window_labels WHERE window_s = :_w AND stride_s = :_s AND pipeline = :_p "
               f"AND (\n{where}\n)")
        ws = self.window_set
        try:
            result = run_query(self.index, sql, {**self.params, "_w": ws.window_s, "_s": ws.stride_s,
                                                 "_p": ws.pipeline}, limit=2**31 - 2, timeout_s=600)
        except QueryError as exc:
            raise WhereError(f"the condition may only read window_labels, one condition, no ';' ({exc}); "
                             "nothing was changed") from None
        return np.unique(np.fromiter((r[0] for r in result.rows), dtype=np.int64))

    def __len__(self) -> int:
        return int(self.ids.size)

    def counts(self) -> dict[str, int]:
        """Windows per label, every label present (zeros included)."""
        found = np.bincount(self.codes, minlength=len(LABELS)) if self.codes.size else np.zeros(len(LABELS), int)
        return {label: int(found[code]) for code, label in enumerate(LABELS)}

    def positions(self, code: int) -> np.ndarray:
        """Indices into this selection of the windows with one label code, ascending."""
        return np.flatnonzero(self.codes == code)

    def pipeline_spec(self):
        """The selection's pipeline's spec (``eegcache.pipeline.spec.PreprocessSpec``), read-time steps included."""
        import json

        from eegcache.index.models import Pipeline
        from eegcache.pipeline.spec import PreprocessSpec

        with self.engine.connect() as conn:
            raw = conn.execute(select(Pipeline.spec_json).where(Pipeline.id == self.window_set.pipeline_id)).scalar_one()
        return PreprocessSpec.from_dict(json.loads(raw))

    def locations(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(object keys, key index per window, start sample per window), in the selection's order: what a reader
        needs, fetched once."""
        keys: dict[str, int] = {}
        starts = np.empty(self.ids.size, dtype=np.int64)
        key_of = np.empty(self.ids.size, dtype=np.int32)
        where = {int(i): n for n, i in enumerate(self.ids.tolist())}
        with self.engine.connect() as conn:
            rows = conn.execute(select(Window.id, Recording.object_key, Window.start_sample)
                                .join(Recording, Recording.id == Window.recording_id)
                                .where(Window.window_set_id == self.window_set.id))
            seen = 0
            for wid, key, start in rows:
                n = where.get(wid)
                if n is None:
                    continue
                key_of[n] = keys.setdefault(key, len(keys))
                starts[n] = start
                seen += 1
        if seen != self.ids.size:
            raise SelectionError(f"{self.ids.size - seen} selected windows are no longer in the index; "
                                 "the cache changed since the selection was made: select again")
        return list(keys), key_of, starts

    def to_pandas(self):
        """The selected ``window_labels`` rows as a DataFrame, in the selection's order."""
        try:
            import pandas as pd
        except ImportError:
            raise SelectionError("to_pandas needs pandas: pip install pandas") from None
        ws = self.window_set
        with self.engine.connect() as conn:
            result = conn.execute(text("SELECT * FROM window_labels WHERE window_s = :w AND stride_s = :s AND "
                                       "pipeline = :p ORDER BY window_id"),
                                  {"w": ws.window_s, "s": ws.stride_s, "p": ws.pipeline})
            frame = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
        frame = frame[frame["window_id"].isin(self.ids)].reset_index(drop=True)
        return frame

    def __repr__(self) -> str:
        ws = self.window_set
        return (f"<WindowSelection {len(self):,} windows: pipeline {ws.pipeline!r}, {ws.window_s:g} s / "
                f"{ws.stride_s:g} s, split {self.split or 'all'}{', where ' + repr(self.where) if self.where else ''}; "
                f"{self.counts()}>")
