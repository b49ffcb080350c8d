"""Pipelines: named, declared preprocessing specs, so one cache holds several preprocessings of the same EDFs.

A name is bound to one spec. Re-using a name with another spec is refused (the message names the fields that
differ) unless the caller asks to replace it; the recordings of a replaced pipeline are rebuilt as they are
ingested again, and until then the trainer reports them stale.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, delete, select

from eegcache.errors import InputError
from eegcache.index.db import writer
from eegcache.index.models import Pipeline, WindowSet
from eegcache.index.sql import insert_ignore
from eegcache.pipeline import keys
from eegcache.pipeline.spec import DEFAULT_COMPUTE, IngestConfig, PreprocessSpec


class PipelineError(InputError):
    """A pipeline cannot be used as asked; the message says what to do instead."""


@dataclass(frozen=True)
class PipelineRef:
    id: int
    name: str
    spec: PreprocessSpec
    replaced: bool = False


def _spec_of(row) -> PreprocessSpec:
    return PreprocessSpec.from_dict(json.loads(row.spec_json))


def _differences(old: PreprocessSpec, new: PreprocessSpec) -> list[str]:
    return [f"{f.name} {getattr(old, f.name)!r} -> {getattr(new, f.name)!r}"
            for f in dataclasses.fields(PreprocessSpec) if getattr(old, f.name) != getattr(new, f.name)]


def requested_spec(config: IngestConfig, stored: PreprocessSpec | None) -> PreprocessSpec:
    """The stored pipeline's spec with the user's explicit settings on top (or the whole spec for library callers).

    A library caller's spec names every field, ``compute`` too: one at the default compute asks for a stored
    pipeline's own (a pipeline built before ``compute`` existed is float64, and must be neither refused nor rebuilt
    by a caller who never chose); ``replace`` takes the spec as given."""
    if stored is None:
        return config.spec
    if config.explicit is None:
        if not config.replace and config.spec.compute == DEFAULT_COMPUTE:
            return dataclasses.replace(config.spec, compute=stored.compute)
        return config.spec
    return dataclasses.replace(stored, **{name: getattr(config.spec, name) for name in config.explicit})


def resolve_pipeline(engine: Engine, config: IngestConfig) -> PipelineRef:
    """The pipeline this ingest builds, created on first use; a changed spec is refused unless ``config.replace``."""
    now = datetime.now(UTC).replace(tzinfo=None)
    with writer(engine).begin() as conn:
        row = conn.execute(select(Pipeline.__table__).where(Pipeline.name == config.pipeline)).first()
        if row is None:
            spec = config.spec
            conn.execute(insert_ignore(conn, Pipeline.__table__).values(
                name=config.pipeline, spec_json=spec.canonical_json(), spec_digest=keys.spec_digest(spec), created_at=now))
            pid = conn.execute(select(Pipeline.id).where(Pipeline.name == config.pipeline)).scalar_one()
            return PipelineRef(pid, config.pipeline, spec)
        stored = _spec_of(row)
        spec = requested_spec(config, stored)
        if spec == stored:
            return PipelineRef(row.id, config.pipeline, stored)
        if not config.replace:
            raise PipelineError(
                f"pipeline {config.pipeline!r} was built with another preprocessing spec (differs in: "
                f"{'; '.join(_differences(stored, spec))}). Use --pipeline OTHER to build a second pipeline beside it, "
                f"or --replace to rebuild {config.pipeline!r} with the new spec")
        conn.execute(Pipeline.__table__.update().where(Pipeline.id == row.id).values(
            spec_json=spec.canonical_json(), spec_digest=keys.spec_digest(spec)))
        if spec.fs != stored.fs:  # window sets count samples at the pipeline's rate
            conn.execute(delete(WindowSet).where(WindowSet.pipeline_id == row.id))
        return PipelineRef(row.id, config.pipeline, spec, replaced=True)


def pipeline_names(conn) -> list[str]:
    return list(conn.execute(select(Pipeline.name).order_by(Pipeline.name)).scalars())


def choose_pipeline(conn, name: str | None) -> tuple[int, str] | None:
    """The named pipeline, or the only one when ``name`` is None; refuses with the list otherwise. None: the
    cache has no pipeline yet (nothing ingested)."""
    rows = conn.execute(select(Pipeline.id, Pipeline.name).order_by(Pipeline.name)).all()
    if name is not None:
        for pid, pname in rows:
            if pname == name:
                return pid, pname
        raise PipelineError(f"no pipeline named {name!r} in this cache; pipelines: "
                            f"{', '.join(n for _, n in rows) or 'none (nothing ingested yet)'}")
    if not rows:
        return None
    if len(rows) > 1:
        raise PipelineError(f"this cache holds {len(rows)} pipelines ({', '.join(n for _, n in rows)}); "
                            "choose one with --pipeline NAME")
    return rows[0][0], rows[0][1]
