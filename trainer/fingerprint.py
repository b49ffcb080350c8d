"""The fingerprint of a run's selection, stored in its checkpoints so that ``--resume`` notices a changed cache.

A run is a function of its configuration *and* of what the index selects. When windows are added, removed or
re-labelled, or a recording is re-ingested with other bytes, a resumed run would silently draw other epochs (and
its LR schedule would change length): the fingerprint records enough to say what changed.

- per class: how many windows are selected and the sha256 of their sorted ids (int64, little-endian);
- the recordings of the split that have windows in the window set: how many, and the sha256 of their
  (id, object key) pairs, so a recording re-ingested from other bytes counts as changed even where SQLite hands
  its new windows the old ids. A recording that ``--where`` leaves out but that is re-ingested counts too (the
  check errs on the side of saying so);
- the window set, the epoch size, and the index (its location and schema revision). The location is reported but
  not compared: a cache may move between a run and its resumption.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

import numpy as np
from sqlalchemy import text

from eegcache.index.db import INDEX_FILE
from trainer.sampling import CLASSES, LABEL_TEXT, EpochSampler, open_cache

FORMAT = 1


def _ids_digest(ids: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(ids, dtype="<i8").tobytes()).hexdigest()


def selection_fingerprint(sampler: EpochSampler) -> dict:
    """What the sampler selects, in a form a checkpoint can hold (plain JSON types)."""
    ws = sampler.window_set
    split = sampler.selection.split
    with open_cache(sampler.cache, sampler.db) as cache, cache.engine.connect() as conn:
        rows = conn.execute(text(
            f"""SELECT r.id, coalesce(r.object_key, '') FROM recordings r
                WHERE {'r.split = :split AND' if split is not None else ''}
                EXISTS (SELECT 1 FROM windows w WHERE w.recording_id = r.id AND w.window_set_id = :ws)
                ORDER BY r.id"""), {"split": split, "ws": ws.id}).all()
        revision = conn.execute(text("SELECT version_num FROM alembic_version")).first()
    recordings = hashlib.sha256("\n".join(f"{i} {key}" for i, key in rows).encode()).hexdigest()
    return {
        "format": FORMAT,
        "classes": {LABEL_TEXT[name]: {"count": int(sampler.ids(name).size), "ids_sha256": _ids_digest(sampler.ids(name))}
                    for name in CLASSES},
        "recordings": {"count": len(rows), "sha256": recordings},
        "window_set": asdict(ws),
        "epoch_windows": int(sampler.epoch_size()),
        "index": {"location": sampler.db or str((Path(sampler.cache) / INDEX_FILE).resolve()),
                  "revision": revision[0] if revision else None},
    }


def differences(stored: dict, current: dict) -> list[str]:
    """What changed from ``stored`` to ``current``, one phrase each (empty: the same selection)."""
    out: list[str] = []
    for label, now in current["classes"].items():
        was = stored.get("classes", {}).get(label)
        if was is None:
            out.append(f"{label}: not recorded before, now {now['count']:,} windows")
        elif was["count"] != now["count"]:
            out.append(f"{label}: {was['count']:,} → {now['count']:,} windows")
        elif was["ids_sha256"] != now["ids_sha256"]:
            out.append(f"{label}: {now['count']:,} windows as before, but other ones (the ids differ)")
    was_rec, now_rec = stored.get("recordings", {}), current["recordings"]
    if was_rec.get("count") != now_rec["count"]:
        out.append(f"recordings with windows in the selection: {was_rec.get('count')} → {now_rec['count']}")
    elif was_rec.get("sha256") != now_rec["sha256"]:
        out.append(f"recordings: {now_rec['count']} as before, but some were re-ingested with other content")
    if stored.get("window_set") != current["window_set"]:
        out.append(f"window set: {stored.get('window_set')} → {current['window_set']}")
    if stored.get("epoch_windows") != current["epoch_windows"]:
        out.append(f"windows per epoch: {stored.get('epoch_windows')} → {current['epoch_windows']} "
                   "(the LR schedule changes length)")
    return out
