"""Removing recordings from the index is explicit: a moved or vanished tree never removes anything by itself.

``remove`` deletes the index rows of the chosen recordings (their windows and events with them) in one write
transaction; their objects become unreferenced and ``gc`` reclaims them after its grace period. Twins of a removed
recording take over its windows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine, delete, select

from eegcache.errors import InputError
from eegcache.index.db import writer
from eegcache.index.models import Dataset, Pipeline, Recording, SeizureEvent, Window
from eegcache.store import ObjectStore


class RemoveError(InputError):
    pass


@dataclass
class RemoveReport:
    recordings: list[str] = field(default_factory=list)  # "dataset/rel_path (pipeline)"
    windows: int = 0


def remove(engine: Engine, store: ObjectStore, *, dataset: str | None = None, pipeline: str | None = None,
           missing: bool = False, dry_run: bool = False) -> RemoveReport:
    """Remove the recordings matching every given condition: of ``dataset``, of ``pipeline``, whose source file is
    gone (``missing``). At least one condition is required."""
    from eegcache.ops.register import settle_twins

    if dataset is None and pipeline is None and not missing:
        raise RemoveError("say what to remove: --missing, --dataset NAME and/or --pipeline NAME")
    query = (select(Recording.id, Recording.rel_path, Recording.pipeline_id, Dataset.name.label("dataset"),
                    Pipeline.name.label("pipeline"))
             .join(Dataset, Dataset.id == Recording.dataset_id).join(Pipeline, Pipeline.id == Recording.pipeline_id))
    with writer(engine).begin() as conn:
        for kind, name, model in (("dataset", dataset, Dataset), ("pipeline", pipeline, Pipeline)):
            if name is not None and conn.execute(select(model.id).where(model.name == name)).first() is None:
                names = ", ".join(conn.execute(select(model.name).order_by(model.name)).scalars()) or "none"
                raise RemoveError(f"no {kind} named {name!r}; {kind}s: {names}")
        if dataset is not None:
            query = query.where(Dataset.name == dataset)
        if pipeline is not None:
            query = query.where(Pipeline.name == pipeline)
        if missing:
            query = query.where(Recording.source_missing.is_(True))
        rows = conn.execute(query.order_by(Dataset.name, Recording.rel_path, Pipeline.name)).all()
        report = RemoveReport([f"{r.dataset}/{r.rel_path} ({r.pipeline})" for r in rows])
        ids = [r.id for r in rows]
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            report.windows += len(conn.execute(select(Window.id).where(Window.recording_id.in_(chunk))).all())
            if not dry_run:
                conn.execute(delete(Window).where(Window.recording_id.in_(chunk)))
                conn.execute(delete(SeizureEvent).where(SeizureEvent.recording_id.in_(chunk)))
                conn.execute(delete(Recording).where(Recording.id.in_(chunk)))
    if not dry_run:
        for pipeline_id in {r.pipeline_id for r in rows}:
            settle_twins(engine, store, pipeline_id)
    return report
