"""The epoch draw: which windows one epoch trains on, chosen by SQL over the index and seeded numpy.

Why it looks like this:

- The index is the manifest. Each class's window ids come from ONE indexed query (window set, split, an optional
  user ``--where`` over the public ``window_labels`` view), fetched once and kept as sorted int64 arrays, so an
  epoch draw is pure numpy (no ``ORDER BY random()``, no per-epoch SQL): well under a second at 10 M windows.
- An epoch is a function of (seed, epoch) and the selected ids only, so a resumed run redraws exactly the epoch an
  uninterrupted one would have, and every distributed rank computes the same epoch and takes its own slice.
- The user's ``--where`` text is SQL and therefore dangerous; it runs on a connection that SQLite opens read-only,
  with an authorizer that allows reading only, one statement at a time. Everything else goes in as bound
  parameters.
- A silent subset is the failure this project exists to end: the sampler refuses to start, with counts, when the
  window set is missing, when the selection holds no seizure windows, or when recordings of the split failed or are
  not yet windowed (unless ``allow_incomplete``).

torch is not imported here: ``trainer sample`` works without it.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from eegcache import query
from eegcache.errors import InputError
from eegcache.index.db import INDEX_FILE
from eegcache.sampling import CLASSES, CODES, LABEL_TEXT, Ratios, draw_epoch, shard, target_counts  # noqa: F401


class SamplingError(InputError):
    """The selection cannot be trained on as asked; the message says why, with counts."""


# ----------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class Selection:
    """Which windows are eligible: a window set, a split (None: all splits), an optional SQL condition over the
    ``window_labels`` view with its own named parameters (``:name`` in the text, values in ``params``)."""

    window_s: float = 60.0
    stride_s: float = 60.0
    split: str | None = "train"
    where: str | None = None
    params: tuple[tuple[str, str], ...] = ()
    allow_incomplete: bool = False
    pipeline: str | None = None  # None: the cache's only pipeline

    def describe(self) -> str:
        parts = [f"{self.window_s:g} s windows at {self.stride_s:g} s stride",
                 f"split {self.split!r}" if self.split else "all splits"]
        if self.pipeline:
            parts.insert(0, f"pipeline {self.pipeline!r}")
        if self.where:
            parts.append(f"where {self.where.strip()!r}")
        return ", ".join(parts)


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


@dataclass
class EpochDraw:
    """One epoch (or one rank's share of it): window ids in training order, with their class codes and counts."""

    epoch: int
    seed: int
    ids: np.ndarray  # int64, shuffled
    codes: np.ndarray  # int8 label code per id (0 background, 1 partial, 2 full)
    available: dict[str, int]
    drawn: dict[str, int]
    rank: int = 0
    world_size: int = 1
    epoch_size: int = 0  # windows in the whole epoch, before sharding

    def to_dict(self, *, with_ids: bool = False) -> dict:
        out = {
            "epoch": self.epoch, "seed": self.seed, "rank": self.rank, "world_size": self.world_size,
            "epoch_windows": self.epoch_size, "windows": int(self.ids.shape[0]),
            "available": {LABEL_TEXT[k]: v for k, v in self.available.items()},
            "drawn": {LABEL_TEXT[k]: v for k, v in self.drawn.items()},
        }
        if with_ids:
            out["ids"] = self.ids.tolist()
        return out


# ----------------------------------------------------------------------------------------------------------------
# SQL


def connect_readonly(cache: Path, *, authorizer: bool = True) -> sqlite3.Connection:
    """A connection to the cache's index that can only read (see ``eegcache.query.connect_readonly``)."""
    index_file = Path(cache) / INDEX_FILE
    if not index_file.is_file():
        raise SamplingError(f"{cache} is not an eegcache cache (no {INDEX_FILE}); run eegcache ingest first")
    try:  # read-only is enough: a cache on a read-only mount, or another user's, is opened immutable (see query)
        conn = query.connect_readonly(index_file, authorizer=authorizer)
    except (query.QueryError, sqlite3.Error) as exc:
        raise SamplingError(str(exc) if isinstance(exc, query.QueryError) else f"cannot read {index_file}: {exc}") from None
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'window_sets'").fetchone() is None:
        conn.close()  # created by an ingest that has not migrated it yet, or killed before it did
        raise SamplingError(f"{cache} is not an eegcache cache yet (its index has no tables); run eegcache ingest first")
    return conn


def choose_pipeline(conn: sqlite3.Connection, name: str | None, cache: Path) -> tuple[int, str]:
    """(id, name) of the named pipeline, or of the only one when ``name`` is None; refuses with the list."""
    rows = conn.execute("SELECT id, name FROM pipelines ORDER BY name").fetchall()
    names = ", ".join(r[1] for r in rows) or "none (nothing has been ingested)"
    if name is not None:
        for pid, pname in rows:
            if pname == name:
                return pid, pname
        raise SamplingError(f"no pipeline named {name!r} in {cache}; pipelines: {names}")
    if len(rows) == 1:
        return rows[0][0], rows[0][1]
    if not rows:
        raise SamplingError(f"{cache} holds no pipeline yet (nothing has been ingested); run eegcache ingest")
    raise SamplingError(f"{cache} holds {len(rows)} pipelines ({names}); choose one with --pipeline NAME")


def _fetch_ids(conn: sqlite3.Connection, sql: str, params: Mapping[str, object]) -> np.ndarray:
    """Ids of one query as sorted int64. ``group_concat`` moves 10 M ids out of SQLite 3x faster than iterating
    rows (one string, parsed by numpy); past SQLite's string limit (~100 M ids) it falls back to iterating."""
    try:
        text = conn.execute(f"SELECT group_concat(id) FROM (\n{sql}\n)", params).fetchone()[0]
        ids = np.fromstring(text, dtype=np.int64, sep=",") if text else np.empty(0, dtype=np.int64)
    except sqlite3.DataError:  # string or blob too big
        ids = np.fromiter((row[0] for row in conn.execute(sql, params)), dtype=np.int64)
    if ids.size > 1 and not bool(np.all(ids[1:] > ids[:-1])):
        ids = np.unique(ids)  # sorted and deduplicated: the draw must not depend on the order SQLite returns rows
    return ids


def _fmt_counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{LABEL_TEXT[name]} {counts.get(name, 0):,}" for name in CLASSES)


class EpochSampler:
    """Selected window ids per class (queried once), and the seeded draw of any epoch from them.

    Construction validates the selection and raises :class:`SamplingError` with counts when training on it would
    be wrong; :meth:`draw` is then pure numpy.
    """

    def __init__(self, cache: Path | str, selection: Selection | None = None, ratios: Ratios | None = None,
                 seed: int = 0, *, max_windows: int | None = None) -> None:
        self.cache = Path(cache)
        self.selection = selection or Selection()
        self.ratios = ratios or Ratios()
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if max_windows is not None and max_windows < 1:
            raise ValueError(f"max_windows must be >= 1, got {max_windows}")
        self.seed = int(seed)
        self.max_windows = max_windows
        self.incomplete: dict[str, object] = {}
        conn = connect_readonly(self.cache)
        try:
            self.window_set = self._window_set(conn)
            self._check_split(conn)
            self.incomplete = self._check_complete(conn)
            self._ids = {name: self._query_class(conn, name) for name in CLASSES}
        finally:
            conn.close()
        self.available = {name: int(ids.size) for name, ids in self._ids.items()}
        self.targets = target_counts(self.available, self.ratios)
        if self.available["partial"] + self.available["full"] == 0:
            raise SamplingError(
                f"no seizure windows in the selection ({self.selection.describe()}): {_fmt_counts(self.available)}; "
                "a detector cannot learn seizures from it. Check --split and --where, or eegcache stats")
        if self.available["partial"] == 0:
            raise SamplingError(
                f"no partial_seizure windows in the selection ({self.selection.describe()}): "
                f"{_fmt_counts(self.available)}; the ratios are relative to the partial count, so nothing would be "
                "drawn. Use a window set with shorter windows or a wider --where")

    # -- validation ------------------------------------------------------------------------------------------

    def _window_set(self, conn: sqlite3.Connection) -> WindowSetInfo:
        pid, pname = choose_pipeline(conn, self.selection.pipeline, self.cache)
        rows = conn.execute(
            "SELECT id, window_s, stride_s, fs, window_samples, stride_samples FROM window_sets WHERE pipeline_id = ? "
            "ORDER BY id", (pid,)).fetchall()
        sel = self.selection
        match = [WindowSetInfo(*r, pid, pname) for r in rows
                 if math.isclose(r[1], sel.window_s, abs_tol=1e-9) and math.isclose(r[2], sel.stride_s, abs_tol=1e-9)]
        if match:
            return match[0]
        counts = dict(conn.execute("SELECT window_set_id, count(*) FROM windows GROUP BY window_set_id").fetchall())
        listing = "; ".join(f"{r[1]:g} s windows at {r[2]:g} s stride, {r[3]:g} Hz ({counts.get(r[0], 0):,} windows)"
                            for r in rows) or "none (nothing has been ingested)"
        raise SamplingError(
            f"no window set of {sel.window_s:g} s windows at {sel.stride_s:g} s stride in pipeline {pname!r} of "
            f"{self.cache}. Window sets that exist: {listing}. Add it from the stored masks (no EDF is re-read) with "
            f"eegcache ingest SRC --cache {self.cache} --pipeline {pname} --window {sel.window_s:g} "
            f"--stride {sel.stride_s:g}")

    def _check_split(self, conn: sqlite3.Connection) -> None:
        split = self.selection.split
        if split is None:
            return
        pid = self.window_set.pipeline_id
        if conn.execute("SELECT 1 FROM recordings WHERE split = ? AND pipeline_id = ? LIMIT 1",
                        (split, pid)).fetchone() is None:
            splits = [r[0] for r in conn.execute("SELECT DISTINCT split FROM recordings WHERE pipeline_id = ? "
                                                 "ORDER BY split", (pid,)) if r[0]]
            raise SamplingError(f"split {split!r} has no recordings in {self.cache}; "
                                f"splits present: {', '.join(splits) or 'none'}")

    def _check_complete(self, conn: sqlite3.Connection) -> dict[str, object]:
        """Recordings of the split that the selection would silently miss: not ingested (failed, or any status
        other than ingested/skipped; skipped ones are byte-identical duplicates of an ingested recording), or
        ingested but without windows in this window set although long enough to have some (ingest unfinished).

        The check covers the whole split, not only what ``--where`` matches: a failed recording has no windows,
        so no condition over ``window_labels`` can say whether it would have matched."""
        ws = self.window_set
        split_sql, split_params = ("r.split = ?", (self.selection.split,)) if self.selection.split else ("1", ())
        split_sql, split_params = f"r.pipeline_id = ? AND {split_sql}", (ws.pipeline_id, *split_params)
        status = dict(conn.execute(f"SELECT r.status, count(*) FROM recordings r WHERE {split_sql} GROUP BY r.status",
                                   split_params).fetchall())
        bad = {s: n for s, n in status.items() if s not in ("ingested", "skipped")}
        example = conn.execute(
            f"SELECT r.name, r.status, r.reason FROM recordings r WHERE {split_sql} "
            "AND r.status NOT IN ('ingested', 'skipped') ORDER BY r.name LIMIT 1", split_params).fetchone()
        unwindowed = conn.execute(
            f"""SELECT count(*) FROM recordings r JOIN objects o ON o.key = r.object_key
                WHERE {split_sql} AND r.status = 'ingested' AND o.fs = ? AND o.n_samples >= ?
                AND NOT EXISTS (SELECT 1 FROM windows w WHERE w.recording_id = r.id AND w.window_set_id = ?)""",
            (*split_params, ws.fs, ws.window_samples, ws.id)).fetchone()[0]
        stale = conn.execute(
            f"""SELECT count(*) FROM recordings r JOIN pipelines p ON p.id = r.pipeline_id
                WHERE {split_sql} AND r.status IN ('ingested', 'skipped') AND r.spec_digest <> p.spec_digest""",
            split_params).fetchone()[0]
        total = sum(status.values())
        info: dict[str, object] = {"recordings": total, "not_ingested": bad, "unwindowed": unwindowed, "stale": stale}
        if not bad and not unwindowed and not stale:
            return {}
        where = f"split {self.selection.split!r}" if self.selection.split else "the cache"
        problems = []
        if bad:
            kinds = ", ".join(f"{n} {s}" for s, n in sorted(bad.items()))
            first = f" (e.g. {example[0]}: {example[2] or example[1]})" if example else ""
            problems.append(f"{sum(bad.values())} of {total} recordings in {where} are not ingested: {kinds}{first}")
        if unwindowed:
            problems.append(f"{unwindowed} ingested recordings in {where} have no {ws.window_s:g} s / {ws.stride_s:g} s "
                            "windows yet (ingest unfinished for this window set)")
        if stale:
            problems.append(f"{stale} recordings in {where} were built with an earlier spec of pipeline "
                            f"{ws.pipeline!r} (replaced; ingest their dataset again to rebuild them)")
        if not self.selection.allow_incomplete:
            raise SamplingError(
                "refusing to train on an incomplete selection: " + "; ".join(problems)
                + ". Training would silently use a subset. Fix or re-run eegcache ingest, or pass --allow-incomplete "
                "to train on the complete recordings only")
        info["message"] = "; ".join(problems)
        return info

    # -- the per-class queries ------------------------------------------------------------------------------

    def _query_class(self, conn: sqlite3.Connection, name: str) -> np.ndarray:
        sel = self.selection
        params: dict[str, object] = {"_ws": self.window_set.id, "_code": CODES[name]}
        split_join, split_cond = "", ""
        if sel.split is not None:
            split_join, split_cond = "JOIN recordings r ON r.id = w.recording_id", "AND r.split = :_split"
            params["_split"] = sel.split
        inner = f"SELECT w.id FROM windows w {split_join} WHERE w.window_set_id = :_ws AND w.label = :_code {split_cond}"
        if not sel.where or not sel.where.strip():
            sql = inner
        else:
            for key, value in sel.params:
                if key.startswith("_"):
                    raise SamplingError(f"--param {key}: names starting with '_' are reserved")
                params[key] = value
            # The user's text stands alone on its lines inside parentheses, so a trailing "--" comment ends there.
            # Its unqualified names resolve against window_labels only.
            sql = f"SELECT window_id AS id FROM window_labels WHERE window_id IN ({inner}) AND (\n{sel.where}\n)"
        try:
            return _fetch_ids(conn, sql, params)
        except sqlite3.DatabaseError as exc:
            if str(exc) == "not authorized":
                raise SamplingError(f"--where {sel.where!r} was refused: the condition may only read window_labels "
                                    "(no writes, ATTACH, PRAGMA or extension functions); nothing was changed") from None
            raise SamplingError(f"--where {sel.where!r} is not a valid condition over window_labels: {exc}") from None
        except (sqlite3.ProgrammingError, sqlite3.Warning) as exc:
            raise SamplingError(f"--where {sel.where!r} was refused: {exc} (one condition, no ';'); "
                                "nothing was changed") from None

    # -- the draw ---------------------------------------------------------------------------------------------

    def ids(self, name: str) -> np.ndarray:
        """All selected window ids of one class (sorted; do not modify)."""
        return self._ids[name]

    def epoch_size(self) -> int:
        total = sum(self.targets.values())
        return total if self.max_windows is None else min(total, self.max_windows)

    def draw(self, epoch: int, rank: int = 0, world_size: int = 1, *, pad: bool = True) -> EpochDraw:
        """The epoch's windows in training order (rank's share). Depends only on (seed, epoch) and the selection."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        ids, code, size = draw_epoch(self._ids, self.targets, self.seed, epoch, self.max_windows, rank, world_size,
                                     pad=pad)
        drawn = {name: int(np.count_nonzero(code == CODES[name])) for name in CLASSES}
        return EpochDraw(int(epoch), self.seed, ids, code, dict(self.available), drawn, rank, world_size, size)

    def describe(self) -> list[str]:
        """Human lines: the selection, counts available and drawn per class (what training prints first)."""
        ws = self.window_set
        lines = [f"selection: {self.selection.describe()} (pipeline {ws.pipeline!r}, window set {ws.id}: "
                 f"{ws.window_samples} samples at {ws.fs:g} Hz)",
                 f"available: {_fmt_counts(self.available)}",
                 f"per epoch: {_fmt_counts(self.targets)} (ratios {self.ratios.text()})"]
        if self.max_windows is not None and self.max_windows < sum(self.targets.values()):
            lines.append(f"capped at {self.max_windows:,} windows per epoch (--max-windows-per-epoch)")
        if self.incomplete:
            lines.append(f"warning (--allow-incomplete): {self.incomplete['message']}")
        return lines

    def summary(self) -> dict:
        return {
            "selection": asdict(self.selection), "ratios": asdict(self.ratios), "seed": self.seed,
            "window_set": asdict(self.window_set),
            "available": {LABEL_TEXT[k]: v for k, v in self.available.items()},
            "per_epoch": {LABEL_TEXT[k]: v for k, v in self.targets.items()},
            "epoch_windows": self.epoch_size(), "incomplete": self.incomplete or None,
        }


def parse_params(items: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``name=value`` strings (``--param``) → bound parameters for ``--where``."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"--param expects name=value with an identifier name, got {item!r}")
        out.append((key.strip(), value))
    return tuple(out)
