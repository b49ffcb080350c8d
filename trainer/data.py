"""Windows as torch samples: slices of the stored continuous arrays, never EDF reads, never materialised copies.

One query at construction maps every window id to (object, start sample); ``__getitem__`` slices ``signal`` and
``labels`` out of that object's Zarr group (a 60 s window touches one or two 64 s chunks) through the store's
``WindowReader`` (``eegcache.reader``: tensorstore with the ``fast`` extra, zarr-python otherwise). Arrays are
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
from torch.utils.data import Dataset

from eegcache.reader import WindowReader
from eegcache.store import open_store
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


class WindowDataset(Dataset):
    """Item i = (signal float32 [channels, window_samples], seizure mask float32 [window_samples]) of window
    ``window_ids[i]``."""

    def __init__(self, cache: Path | str, window_ids: np.ndarray | list[int], *, augment: Augment | None = None,
                 epoch: int = 0, reader: str | None = None, db: str | None = None, selection=None,
                 read_transform=None) -> None:
        """``selection`` (an ``eegcache.WindowSelection`` whose ids are ``window_ids``) supplies the locations from
        its one streaming query instead of a lookup by id. ``read_transform`` (``eegcache.preprocess.
        WindowTransform``, the pipeline's declared read-time steps) runs on every window before augmentation."""
        self.cache = Path(cache)
        self.window_ids = np.asarray(window_ids, dtype=np.int64)
        if selection is not None:
            keys, key_of, starts = selection.locations()
            self.keys, self._codes, self._starts = keys, key_of, starts
            self.window_samples = selection.window_set.window_samples
        else:
            self.keys, self._codes, self._starts, self.window_samples = _lookup(self.cache, self.window_ids, db)
        self.augment = augment
        self.read_transform = read_transform
        self.epoch = epoch
        self.reader_backend = reader
        self._reader: WindowReader | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return int(self.window_ids.size)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_reader"] = None  # handles stay in the process that opened them
        return state

    @property
    def reader(self) -> WindowReader:
        """This process's reader (a forked worker's copy of the parent's drops the parent's handles itself)."""
        if self._reader is None:
            self._reader = open_store(self.cache).reader(self.reader_backend)
        return self._reader

    def _item(self, i: int) -> tuple[str, int, int]:
        start = int(self._starts[i])
        return self.keys[self._codes[i]], start, start + self.window_samples

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The stored slices as numpy (signal in its stored dtype, labels uint8), before any augmentation."""
        return self.reader.read(*self._item(i))

    def _sample(self, i: int, signal: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        signal = signal.astype(np.float32, copy=False)
        if self.read_transform is not None:
            signal = self.read_transform(signal)
        if self.augment is not None:
            signal = self.augment.apply(signal, self.epoch, int(self.window_ids[i]))
        return torch.from_numpy(np.ascontiguousarray(signal)), torch.from_numpy(labels.astype(np.float32))

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A batch in one call: the reader issues every window's read before awaiting the first."""
        got = self.reader.read_many([self._item(int(i)) for i in indices])
        return [self._sample(int(i), s, lab) for i, (s, lab) in zip(indices, got, strict=True)]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._sample(i, *self.read(i))


def pipeline_transform(cache: Path | str, pipeline: str | None, db: str | None = None):
    """The read-time transform a pipeline declares (``window_filter``), or None."""
    import json

    from eegcache.index.models import Pipeline
    from eegcache.pipelines import choose_pipeline
    from eegcache.preprocess import window_transform
    from eegcache.spec import PreprocessSpec

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
