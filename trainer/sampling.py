"""The epoch draw: which windows one epoch trains on, chosen by SQL over the index and seeded numpy.

Why it looks like this:

- The index is the manifest. The window ids come from the public API's ``WindowSelection`` (one indexed query:
  window set, split, an optional user ``--where`` over the public ``window_labels`` view; SQLite or PostgreSQL),
  fetched once and kept as sorted int64 arrays per class, so an epoch draw is pure numpy
  (``eegcache.sampling.draw_epoch``, the same draw as ``eegcache.torch.BalancedSampler``).
- An epoch is a function of (seed, epoch) and the selected ids only, so a resumed run redraws exactly the epoch an
  uninterrupted one would have, and every distributed rank computes the same epoch and takes its own slice.
- The user's ``--where`` text is SQL and therefore dangerous; it runs only through ``eegcache.index.query``'s reader
  (SQLite read-only with an authorizer; PostgreSQL as ``eegcache_reader``), one statement at a time. Everything else
  goes in as bound parameters.
- A silent subset is the failure this project exists to end: the sampler refuses to start, with counts, when the
  window set is missing, when the selection holds no seizure windows, or when recordings of the split failed or are
  not yet windowed (unless ``allow_incomplete``).

torch is not imported here: ``trainer sample`` works without it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import text

from eegcache.sampling import CLASSES, CODES, LABEL_TEXT, Ratios, draw_epoch, shard, target_counts  # noqa: F401
from eegcache.selection import SelectionError, WhereError, WindowSetInfo  # noqa: F401 - WindowSetInfo re-exported

SamplingError = SelectionError  # the selection cannot be trained on as asked; the message says why, with counts


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


def open_cache(cache: Path, db: str | None = None):
    """The cache through the public API (SQLite or, with ``db``, any index URL), read-only where it must be."""
    import eegcache

    return eegcache.open(cache, db=db)


def _fmt_counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{LABEL_TEXT[name]} {counts.get(name, 0):,}" for name in CLASSES)


class EpochSampler:
    """Selected window ids per class (queried once), and the seeded draw of any epoch from them.

    Construction validates the selection and raises :class:`SamplingError` with counts when training on it would
    be wrong; :meth:`draw` is then pure numpy.
    """

    def __init__(self, cache: Path | str, selection: Selection | None = None, ratios: Ratios | None = None,
                 seed: int = 0, *, max_windows: int | None = None, db: str | None = None) -> None:
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
        self.db = db
        with open_cache(self.cache, db) as handle:
            sel = self.selection
            try:
                self.windows = handle.windows(sel.split, sel.window_s, sel.stride_s, pipeline=sel.pipeline,
                                              where=sel.where, params=dict(sel.params))
            except WhereError as exc:
                raise SamplingError(f"--where {sel.where!r}: {exc}") from None
            self.window_set = self.windows.window_set
            with handle.engine.connect() as conn:
                self._check_split(conn)
                self.incomplete = self._check_complete(conn)
        self._ids = {name: self.windows.ids[self.windows.codes == CODES[name]] for name in CLASSES}
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

    def _check_split(self, conn) -> None:
        split = self.selection.split
        if split is None:
            return
        pid = self.window_set.pipeline_id
        if conn.execute(text("SELECT 1 FROM recordings WHERE split = :s AND pipeline_id = :p LIMIT 1"),
                        {"s": split, "p": pid}).first() is None:
            splits = [r[0] for r in conn.execute(text("SELECT DISTINCT split FROM recordings WHERE pipeline_id = :p "
                                                      "ORDER BY split"), {"p": pid}) if r[0]]
            raise SamplingError(f"split {split!r} has no recordings in {self.cache}; "
                                f"splits present: {', '.join(splits) or 'none'}")

    def _check_complete(self, conn) -> dict[str, object]:
        """Recordings of the split that the selection would silently miss: not ingested (failed, or any status
        other than ingested/skipped; skipped ones are byte-identical duplicates of an ingested recording), or
        ingested but without windows in this window set although long enough to have some (ingest unfinished).

        The check covers the whole split, not only what ``--where`` matches: a failed recording has no windows,
        so no condition over ``window_labels`` can say whether it would have matched."""
        ws = self.window_set
        split_sql = "r.pipeline_id = :_p" + (" AND r.split = :_split" if self.selection.split else "")
        split_params = {"_p": ws.pipeline_id, "_split": self.selection.split, "_fs": ws.fs, "_n": ws.window_samples,
                        "_ws": ws.id}
        status = dict(conn.execute(text(f"SELECT r.status, count(*) FROM recordings r WHERE {split_sql} "
                                        "GROUP BY r.status"), split_params).all())
        bad = {s: n for s, n in status.items() if s not in ("ingested", "skipped")}
        example = conn.execute(text(
            f"SELECT r.name, r.status, r.reason FROM recordings r WHERE {split_sql} "
            "AND r.status NOT IN ('ingested', 'skipped') ORDER BY r.name LIMIT 1"), split_params).first()
        unwindowed = conn.execute(text(
            f"""SELECT count(*) FROM recordings r JOIN objects o ON o.key = r.object_key
                WHERE {split_sql} AND r.status = 'ingested' AND o.fs = :_fs AND o.n_samples >= :_n
                AND NOT EXISTS (SELECT 1 FROM windows w WHERE w.recording_id = r.id AND w.window_set_id = :_ws)"""),
            split_params).scalar_one()
        stale = conn.execute(text(
            f"""SELECT count(*) FROM recordings r JOIN pipelines p ON p.id = r.pipeline_id
                WHERE {split_sql} AND r.status IN ('ingested', 'skipped') AND r.spec_digest <> p.spec_digest"""),
            split_params).scalar_one()
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

    # -- the draw ---------------------------------------------------------------------------------------------

    def ids(self, name: str) -> np.ndarray:
        """All selected window ids of one class (sorted; do not modify)."""
        return self._ids[name]

    def epoch_size(self) -> int:
        total = sum(self.targets.values())
        return total if self.max_windows is None else min(total, self.max_windows)

    def draw(self, epoch: int, rank: int = 0, world_size: int = 1, *, pad: bool = True,
             redraw: str = "epoch") -> EpochDraw:
        """The epoch's windows in training order (rank's share). Depends only on (seed, epoch) and the selection
        (``redraw="once"``: epoch 0's windows, reshuffled per epoch)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        ids, code, size = draw_epoch(self._ids, self.targets, self.seed, epoch, self.max_windows, rank, world_size,
                                     pad=pad, redraw=redraw)
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
