"""The balanced epoch draw, shared by ``trainer`` and ``eegcache.torch.BalancedSampler`` (one implementation).

An epoch is a function of (seed, epoch) and the selected window ids per class only: a resumed run redraws exactly
the epoch an uninterrupted one would have, and every distributed rank computes the same epoch and takes its own
slice. Pure numpy (no ``ORDER BY random()``, no per-epoch SQL): well under a second at 10 M windows.

The class vocabulary lives here and in ``eegcache.pipeline.windows.LABELS`` (codes 0/1/2 in the index): ratio names are
``partial``, ``full``, ``background``; their label texts are the ``window_labels.label`` values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from eegcache.pipeline.windows import LABELS

# Ratio names (flags) → label code in ``windows.label`` and label text in the ``window_labels`` view.
CLASSES = ("partial", "full", "background")
CODES = {"background": 0, "partial": 1, "full": 2}
LABEL_TEXT = {name: LABELS[code] for name, code in CODES.items()}


@dataclass(frozen=True)
class Ratios:
    """Windows drawn per class, relative to the number of partial-seizure windows available (capped by what exists).

    Defaults are SeizureTransformer's balanced set: all partial windows, 0.3x full-seizure, 2.5x background.
    """

    partial: float = 1.0
    full: float = 0.3
    background: float = 2.5

    def __post_init__(self) -> None:
        for name in CLASSES:
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"ratio {name} must be a finite number >= 0, got {value!r}")

    @classmethod
    def parse(cls, text: str) -> Ratios:
        """``partial=1,full=0.3,background=2.5``; omitted classes keep their default."""
        values: dict[str, float] = {}
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            name, sep, raw = part.partition("=")
            name = name.strip()
            if not sep or name not in CLASSES:
                raise ValueError(f"ratios: expected name=value with name in {', '.join(CLASSES)}; got {part!r}")
            try:
                values[name] = float(raw)
            except ValueError:
                raise ValueError(f"ratios: {name}={raw.strip()!r} is not a number") from None
        return cls(**values)

    def text(self) -> str:
        return ",".join(f"{name}={getattr(self, name):g}" for name in CLASSES)




def target_counts(available: Mapping[str, int], ratios: Ratios) -> dict[str, int]:
    """Windows to draw per class: round(ratio x partial available), half up, capped by what the class has."""
    base = available.get("partial", 0)
    # The tiny epsilon keeps products such as 0.3 * 5 = 1.4999999999999998 on the intended side of .5.
    return {name: min(available.get(name, 0), math.floor(getattr(ratios, name) * base + 0.5 + 1e-9))
            for name in CLASSES}


def shard(ids: np.ndarray, rank: int, world_size: int, *, pad: bool = True) -> np.ndarray:
    """Rank ``rank``'s slice of an epoch: positions rank, rank+w, rank+2w... so ranks are disjoint and near-equal.

    Every rank must run the same number of steps (a collective would hang otherwise). ``pad`` repeats the first
    entries of the epoch to fill the last row (every window is seen; at most w-1 repeats, as torch's
    DistributedSampler does); ``pad=False`` trims the last incomplete row instead (strictly disjoint; at most w-1
    windows unseen this epoch). The repeats are windows seen twice in one epoch: ``trainer fit`` logs their count
    and records it per epoch as ``padded_windows`` in metrics.jsonl.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, world_size) with world_size >= 1; got rank {rank}, world_size {world_size}")
    ids = np.asarray(ids)
    n = ids.shape[0]
    if pad:
        per = -(-n // world_size)
        extra = per * world_size - n
        if extra and n:
            ids = np.concatenate([ids, np.resize(ids, extra)])
    else:
        per = n // world_size
        ids = ids[: per * world_size]
    return ids[rank::world_size]


REDRAWS = ("epoch", "once")


def draw_epoch(pools: Mapping[str, np.ndarray], targets: Mapping[str, int], seed: int, epoch: int,
               max_windows: int | None = None, rank: int = 0, world_size: int = 1, *,
               pad: bool = True, redraw: str = "epoch") -> tuple[np.ndarray, np.ndarray, int]:
    """One epoch: ``targets[name]`` entries of each class's pool (without replacement), shuffled together, capped at
    ``max_windows``, then rank's shard. Returns (entries, class code per entry, epoch size before sharding).

    ``redraw`` ``epoch`` (default): a new draw every epoch. ``once`` (the reference, which draws its training set
    once and shuffles it every epoch): epoch 0's windows in every epoch, in a new order from (seed, epoch)."""
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if redraw not in REDRAWS:
        raise ValueError(f"redraw must be one of {', '.join(REDRAWS)}, got {redraw!r}")
    if redraw == "once":
        ids, code, size = draw_epoch(pools, targets, seed, 0, max_windows)
        if epoch:
            order = np.random.default_rng([int(seed), int(epoch), 0x0CE]).permutation(size)
            ids, code = ids[order], code[order]
        if world_size != 1 or rank != 0:
            positions = shard(np.arange(size), rank, world_size, pad=pad)
            ids, code = ids[positions], code[positions]
        return ids, code, size
    rng = np.random.default_rng([int(seed), int(epoch)])
    parts, codes = [], []
    for name in CLASSES:
        pool, k = pools[name], targets[name]
        pick = rng.permutation(pool.size) if k >= pool.size else rng.choice(pool.size, size=k, replace=False)
        parts.append(pool[pick])
        codes.append(np.full(k, CODES[name], dtype=np.int8))
    ids, code = np.concatenate(parts), np.concatenate(codes)
    order = rng.permutation(ids.size)
    if max_windows is not None:
        order = order[:max_windows]
    ids, code = ids[order], code[order]
    size = int(ids.size)
    if world_size != 1 or rank != 0:
        positions = shard(np.arange(size), rank, world_size, pad=pad)
        ids, code = ids[positions], code[positions]
    return ids, code, size
