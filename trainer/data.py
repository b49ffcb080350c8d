"""Windows as torch samples: slices of the stored continuous arrays, never EDF reads, never materialised copies.

One query at construction maps every window id to (object, start sample); ``__getitem__`` slices ``signal`` and
``labels`` out of that object's Zarr group (a 60 s window decodes about its own bytes: 2,048-sample inner chunks of
one shard) through the store's ``WindowReader`` (``eegcache.store.reader``: by default the direct shard reader, which
is fork-safe, so DataLoader workers read as fast as the parent). Arrays are
opened lazily and per process: the dataset is pickled (spawn) or copied (fork) into DataLoader workers, and each
worker opens its own handles on first use rather than sharing the parent's. ``__getitems__`` serves a whole batch
in one call (the DataLoader uses it), so a batch's reads are issued together.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sqlalchemy import select

import eegcache.torch as eegcache_torch
from trainer.sampling import open_cache


@dataclass(frozen=True)
class Augment:
    """Light, label-preserving augmentation (off unless asked for): a random overall gain and random channel
    dropout. Each window's draw is seeded by (seed, epoch, window id), so it does not depend on which worker loads
    it or in which order: a resumed run augments exactly as an uninterrupted one."""

    gain: tuple[float, float] = (0.8, 1.25)
    channel_dropout: float = 0.1
    seed: int = 0

    def apply(self, signal: np.ndarray, epoch: int, window_id: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch, window_id, 0xA6])
        out = signal * np.float32(rng.uniform(*self.gain))
        if self.channel_dropout > 0:
            out[rng.random(out.shape[0]) < self.channel_dropout] = 0.0
        return out


def _lookup(cache: Path, ids: np.ndarray, db: str | None = None) -> tuple[list[str], np.ndarray, np.ndarray, int]:
    """(object keys, key code per id, start sample per id, window samples) in the order of ``ids``."""
    from eegcache.index.models import Recording, Window, WindowSet

    rows = []
    with open_cache(cache, db) as handle, handle.engine.connect() as conn:
        unique = np.unique(ids).tolist()
        for i in range(0, len(unique), 10_000):
            rows.extend(tuple(r) for r in conn.execute(
                select(Window.id, Recording.object_key, Window.start_sample, WindowSet.window_samples)
                .join(Recording, Recording.id == Window.recording_id)
                .join(WindowSet, WindowSet.id == Window.window_set_id)
                .where(Window.id.in_(unique[i:i + 10_000]))))
    found = {r[0]: r for r in rows}
    missing = [int(i) for i in ids if int(i) not in found]
    if missing:
        raise KeyError(f"{len(missing)} window ids are not in the index (e.g. {missing[:5]}); "
                       "was the cache changed since the epoch was drawn?")
    lengths = {r[3] for r in rows}
    if len(lengths) > 1:
        raise ValueError(f"window ids from window sets of different lengths ({sorted(lengths)} samples) cannot be batched")
    keys = sorted({r[1] for r in rows if r[1] is not None})
    if len(keys) < len({r[1] for r in rows}):
        raise ValueError("some windows belong to recordings without a stored object (status not ingested)")
    code_of = {k: i for i, k in enumerate(keys)}
    codes = np.fromiter((code_of[found[int(i)][1]] for i in ids), dtype=np.int32, count=ids.size)
    starts = np.fromiter((found[int(i)][2] for i in ids), dtype=np.int64, count=ids.size)
    return keys, codes, starts, (lengths.pop() if lengths else 0)


class WindowDataset(eegcache_torch.WindowDataset):
    """``eegcache.torch.WindowDataset`` over given window ids (an epoch's draw, a validation set), with the
    trainer's augmentation: item i = (signal float32 [channels, window_samples], seizure mask float32) of window
    ``window_ids[i]``."""

    def __init__(self, cache: Path | str, window_ids: np.ndarray | list[int], *, augment: Augment | None = None,
                 epoch: int = 0, reader: str | None = None, db: str | None = None, selection=None,
                 read_transform=None, store: str | None = None) -> None:
        """``selection`` (an ``eegcache.WindowSelection`` whose ids are ``window_ids``) supplies the locations from
        its one streaming query instead of a lookup by id. ``read_transform`` (``eegcache.pipeline.preprocess.
        WindowTransform``, the pipeline's declared read-time steps) runs on every window before augmentation."""
        self.cache = Path(cache)
        ids = np.asarray(window_ids, dtype=np.int64)
        if selection is not None:
            keys, key_of, starts = selection.locations()
            window_samples = selection.window_set.window_samples
        else:
            keys, key_of, starts, window_samples = _lookup(self.cache, ids, db)
        self.augment = augment
        self._setup(ids, keys, key_of, starts, window_samples, (self.cache, store),
                    augment.apply if augment is not None else None, reader, read_transform)
        self.epoch = epoch

    @property
    def window_ids(self) -> np.ndarray:
        return self.ids

    @window_ids.setter
    def window_ids(self, ids: np.ndarray) -> None:
        self.ids = np.asarray(ids, dtype=np.int64)


def pipeline_transform(cache: Path | str, pipeline: str | None, db: str | None = None):
    """The read-time transform a pipeline declares (``window_filter``), or None."""
    import json

    from eegcache.index.models import Pipeline
    from eegcache.pipeline.names import choose_pipeline
    from eegcache.pipeline.preprocess import window_transform
    from eegcache.pipeline.spec import PreprocessSpec

    with open_cache(Path(cache), db) as handle, handle.engine.connect() as conn:
        chosen = choose_pipeline(conn, pipeline)
        if chosen is None:
            return None
        raw = conn.execute(select(Pipeline.spec_json).where(Pipeline.id == chosen[0])).scalar_one()
    return window_transform(PreprocessSpec.from_dict(json.loads(raw)))


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: numpy and python RNGs in each worker follow torch's per-worker seed (which
    the loader derives from its seeded generator), so nothing a worker does depends on the parent's RNG state."""
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
