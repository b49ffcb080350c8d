"""Summaries of a cache: the manifest is a query, so stats are always what is on disk."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, text

from eegcache.pipeline.names import choose_pipeline
from eegcache.pipeline.windows import LABELS


def _rows(engine: Engine, sql: str, params: dict | None = None):
    with engine.connect() as conn:
        return conn.execute(text(sql), params or {}).all()


def stats(engine: Engine, cache: Path | None = None, pipeline: str | None = None) -> dict:
    """Recordings by status, windows per class per split and window set, seizure hours, bytes; of one pipeline
    (``pipeline``, or the only one; refused with the list when there are several)."""
    with engine.connect() as conn:
        chosen = choose_pipeline(conn, pipeline)
    p = {"p": chosen[0] if chosen else -1}
    recordings = {s: 0 for s in ("ingested", "failed", "skipped")}
    recordings.update({status: n for status, n in _rows(
        engine, "SELECT status, count(*) FROM recordings WHERE pipeline_id = :p GROUP BY status", p)})
    (missing,), = _rows(engine, "SELECT count(*) FROM recordings WHERE pipeline_id = :p AND source_missing", p)
    datasets = [{"dataset": name, "root": root, "recordings": n} for name, root, n in _rows(engine, """
        SELECT d.name, d.root, count(r.id) FROM datasets d JOIN recordings r ON r.dataset_id = d.id
        WHERE r.pipeline_id = :p GROUP BY d.name, d.root ORDER BY d.name""", p)]
    windows = {label: 0 for label in LABELS}
    by_set: list[dict] = []
    for ws_id, window_s, stride_s, split, label, n in _rows(engine, """
        SELECT ws.id, ws.window_s, ws.stride_s, r.split, w.label, count(*)
        FROM windows w JOIN window_sets ws ON ws.id = w.window_set_id JOIN recordings r ON r.id = w.recording_id
        WHERE ws.pipeline_id = :p
        GROUP BY ws.id, ws.window_s, ws.stride_s, r.split, w.label ORDER BY ws.id, r.split, w.label""", p):
        windows[LABELS[label]] += n
        by_set.append({"window_set": ws_id, "window_s": window_s, "stride_s": stride_s, "split": split,
                       "label": LABELS[label], "windows": n})
    (hours, seizure_hours), = _rows(engine, """
        SELECT coalesce(sum(duration_s), 0) / 3600.0, coalesce(sum(seizure_s), 0) / 3600.0
        FROM recordings WHERE status = 'ingested' AND pipeline_id = :p""", p)
    (object_bytes, n_objects), = _rows(engine, "SELECT coalesce(sum(nbytes), 0), count(*) FROM objects")
    index_bytes = 0
    if cache is not None:
        index_bytes = sum(p.stat().st_size for p in Path(cache).glob("index.sqlite*") if p.is_file())
    return {
        "pipeline": chosen[1] if chosen else None,
        "datasets": datasets,
        "sources_missing": int(missing),
        "recordings": recordings,
        "windows": windows,
        "windows_by_set": by_set,
        "eeg_hours": float(hours),
        "seizure_hours": float(seizure_hours),
        "objects": int(n_objects),
        "bytes": {"objects": int(object_bytes), "index": index_bytes, "total": int(object_bytes) + index_bytes},
    }
