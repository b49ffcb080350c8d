"""Whole-recording inference and scoring, shared by validation during ``fit`` and by ``evaluate``.

A recording is predicted as non-overlapping windows covering it (the tail by one end-aligned window), stitched into
one probability per sample, post-processed into events and scored against the stored label mask: the same mask every
window label was counted from, so reference and training labels cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sqlalchemy import select, text

from eegcache.index.models import SeizureEvent
from eegcache.store import open_store
from trainer import szcore
from trainer.metrics import Counts, score_recording, summarize
from trainer.postprocess import Cover, PostProcess, binarize, mask_events, stitch
from trainer.sampling import SamplingError, open_cache
from trainer.szcore import SzCounts, subject_key


@dataclass(frozen=True)
class RecordingRef:
    id: int
    name: str
    object_key: str
    n_samples: int
    fs: float
    dataset: str | None = None
    layout: str | None = None
    rel_path: str | None = None
    subject: str | None = None
    session: str | None = None
    token: str | None = None
    events: tuple[tuple[float, float], ...] = ()  # the stored seizure events (the reference of SzCORE scoring)

    @property
    def subject_key(self) -> str:
        return subject_key(self.dataset, self.subject, self.name)


@dataclass
class RecordingResult:
    recording: RecordingRef
    probs: np.ndarray  # float32 per sample
    reference: np.ndarray  # bool per sample (stored labels)
    hypothesis: np.ndarray  # bool per sample after post-processing
    counts: Counts
    szcore: SzCounts | None = None  # the SzCORE counts (1 Hz masks from the events as TSVs hold them)


def split_recordings(cache: Path, split: str | None, recordings: list[str] | None = None,
                     pipeline: str | None = None, db: str | None = None) -> list[RecordingRef]:
    """Ingested recordings of a split (all splits when None) of a pipeline (the only one when None), in name order;
    optionally only the named ones."""
    from eegcache.selection import pipeline_of

    with open_cache(cache, db) as handle, handle.engine.connect() as conn:
        chosen = pipeline_of(conn, pipeline, str(cache))
        sql = ("SELECT r.id, r.name, r.object_key, o.n_samples, o.fs, d.name, d.layout, r.rel_path, r.subject, "
               "r.session, r.token FROM recordings r JOIN objects o ON o.key = r.object_key "
               "JOIN datasets d ON d.id = r.dataset_id WHERE r.status = 'ingested' AND r.pipeline_id = :p")
        params: dict = {"p": chosen[0]}
        if split is not None:
            sql += " AND r.split = :split"
            params["split"] = split
        rows = conn.execute(text(sql + " ORDER BY r.name, r.id"), params).all()
        events: dict[int, list] = {}
        ids = [r[0] for r in rows]
        for i in range(0, len(ids), 500):
            for rec_id, a, b in conn.execute(
                    select(SeizureEvent.recording_id, SeizureEvent.start_s, SeizureEvent.stop_s)
                    .where(SeizureEvent.recording_id.in_(ids[i:i + 500]))
                    .order_by(SeizureEvent.recording_id, SeizureEvent.start_s)):
                events.setdefault(rec_id, []).append((a, b))
    refs = [RecordingRef(*r, events=tuple(events.get(r[0], ()))) for r in rows]
    if recordings is not None:
        wanted = set(recordings)
        refs = [r for r in refs if r.name in wanted]
        unknown = wanted - {r.name for r in refs}
        if unknown:
            raise SamplingError(f"no ingested recording named {', '.join(sorted(unknown))} in "
                                f"{'split ' + repr(split) if split else 'the cache'}")
    return refs


def _autocast(device: torch.device, precision: str = "bf16"):
    return (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and precision == "bf16"
            else nullcontext())


def unscored_recordings(cache: Path, split: str | None, pipeline: str | None = None,
                        db: str | None = None) -> dict[str, int]:
    """Recordings of the split (of the pipeline) that evaluation cannot score because they are not ingested, by
    reason: ``failed`` (and any other status but ingested), ``duplicate`` (status skipped: byte-identical to an
    ingested recording, which is scored once)."""
    from eegcache.selection import pipeline_of

    with open_cache(cache, db) as handle, handle.engine.connect() as conn:
        chosen = pipeline_of(conn, pipeline, str(cache), required=False)
        if chosen is None:
            return {}
        sql = "SELECT status, count(*) FROM recordings WHERE pipeline_id = :p AND status <> 'ingested'"
        params: dict = {"p": chosen[0]}
        if split is not None:
            sql += " AND split = :split"
            params["split"] = split
        rows = conn.execute(text(sql + " GROUP BY status ORDER BY status"), params).all()
    return {("duplicate" if status == "skipped" else status): int(n) for status, n in rows}


def is_short(rec: RecordingRef, window: int) -> bool:
    return rec.n_samples < window


@torch.no_grad()
def predict_signal(model: torch.nn.Module, signal: np.ndarray, window: int, *, batch_size: int = 16,
                   device: torch.device | str = "cpu", cover: Cover | None = None, transform=None,
                   precision: str = "bf16") -> np.ndarray:
    """Per-sample seizure probability of one recording ([channels, samples] → [samples]). ``cover`` places the
    windows (default: non-overlapping, the tail by one end-aligned window); ``transform`` (the pipeline's
    read-time steps) runs on every window after any zero-padding, as the reference filters its padded tail."""
    device = torch.device(device)
    cover = cover or Cover()
    n = signal.shape[1]
    starts = cover.starts(n, window)
    need = int(starts[-1]) + window if starts.size else 0
    if n < need:  # zero-pad past the end (z-scored signal, so zero is the mean) and crop afterwards
        signal = np.pad(signal, ((0, 0), (0, need - n)))
    was_training = model.training
    model.eval()
    probs = []
    try:
        for i in range(0, len(starts), batch_size):
            windows = [signal[:, s:s + window].astype(np.float32) for s in starts[i:i + batch_size]]
            if transform is not None:
                windows = [transform(w) for w in windows]
            batch = np.stack(windows).astype(np.float32)
            with _autocast(device, precision):
                logits = model(torch.from_numpy(batch).to(device))
            probs.append(torch.sigmoid(logits.float()).cpu().numpy())
    finally:
        model.train(was_training)
    return stitch(np.concatenate(probs), starts, n)


def iter_predictions(model: torch.nn.Module, cache: Path, recordings: list[RecordingRef], window: int, *,
                     post: PostProcess | None = None, batch_size: int = 16,
                     device: torch.device | str = "cpu", cover: Cover | None = None, transform=None,
                     precision: str = "bf16", store: str | None = None) -> Iterator[RecordingResult]:
    """Predictions per recording; with ``cover.skip_short``, recordings shorter than one window are passed over
    (the caller counts them: :func:`is_short`). ``store``: the objects' URL when they are not in ``cache``."""
    store = open_store(cache, store)
    cover = cover or Cover()
    for rec in recordings:
        if cover.skip_short and is_short(rec, window):
            continue
        group = store.open(rec.object_key)
        signal = np.asarray(group["signal"][...])
        reference = np.asarray(group["labels"][...]).astype(bool)
        probs = predict_signal(model, signal, window, batch_size=batch_size, device=device, cover=cover,
                               transform=transform, precision=precision)
        hyp = binarize(probs, rec.fs, post)
        yield RecordingResult(rec, probs, reference, hyp, score_recording(reference, hyp, rec.fs),
                              szcore_counts(rec, hyp))


def szcore_counts(rec: RecordingRef, hypothesis: np.ndarray) -> SzCounts:
    """SzCORE counts of one recording: its stored events against the detections of a post-processed mask."""
    return szcore.score_recording(list(rec.events), mask_events(hypothesis, rec.fs), rec.n_samples / rec.fs)


def score_constant(cache: Path, recordings: list[RecordingRef], value: float,
                   post: PostProcess | None = None, store: str | None = None) -> dict:
    """Scores of a predictor that outputs ``value`` everywhere, through the same post-processing and scoring: the
    baselines a trained model must beat (0: never alarms; 1: always alarms)."""
    store = open_store(cache, store)
    total = Counts()
    subjects = []
    for rec in recordings:
        reference = np.asarray(store.open(rec.object_key)["labels"][...]).astype(bool)
        hyp = binarize(np.full(rec.n_samples, value, dtype=np.float32), rec.fs, post)
        total = total + score_recording(reference, hyp, rec.fs)
        subjects.append((rec.subject_key, szcore_counts(rec, hyp)))
    return with_szcore(summarize(total), subjects, per_subject=True)


def with_szcore(metrics: dict, subjects: list[tuple[str, SzCounts]], per_subject: bool = False) -> dict:
    """The dataset-wide metrics plus the SzCORE per-subject figures as flat ``szcore_*`` keys (the mean over
    subjects; ``_std``: their standard deviation; ``szcore_subjects``: how many); with ``per_subject``, each
    subject's counts and scores under ``szcore_per_subject``."""
    table = szcore.summarize_subjects(subjects)
    out = {**metrics, **szcore.flat(table)}
    if per_subject:
        out["szcore_per_subject"] = table["per_subject"]
    return out


def validate(model: torch.nn.Module, cache: Path, recordings: list[RecordingRef], window: int, *,
             post: PostProcess | None = None, batch_size: int = 16, device: torch.device | str = "cpu",
             on_result: Callable[[RecordingResult], None] | None = None, cover: Cover | None = None,
             transform=None, precision: str = "bf16", store: str | None = None) -> dict:
    """Aggregate scores over recordings (counts summed, then ratios)."""
    total = Counts()
    subjects = []
    for result in iter_predictions(model, cache, recordings, window, post=post, batch_size=batch_size, device=device,
                                   cover=cover, transform=transform, precision=precision, store=store):
        total = total + result.counts
        subjects.append((result.recording.subject_key, result.szcore))
        if on_result is not None:
            on_result(result)
    return with_szcore(summarize(total), subjects)
