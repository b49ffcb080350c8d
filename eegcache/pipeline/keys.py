"""Content keys: sha256 over declared inputs, never over Python objects or code."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

from eegcache.pipeline.spec import LABEL_RULES_VERSION, PIPELINE_VERSION, PreprocessSpec

_BLOCK = 1 << 20


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, streamed so that a 1 h EDF never sits in memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def _digest(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def label_key(annotation_digest: str | None) -> str:
    """Key of the label mask: the annotation bytes and the label rules that read them."""
    return _digest({"annotation": annotation_digest, "rules": LABEL_RULES_VERSION})


def signal_key(edf_digest: str, spec: PreprocessSpec) -> str:
    """Key of the preprocessed signal alone: EDF bytes, canonical spec, pipeline version. Objects that share it
    hold the same signal, so a new label mask for known EDF bytes never needs the EDF again. Read-time steps
    (``window_filter``) are not hashed: they do not change what is stored."""
    return _digest({"edf": edf_digest, "spec": _spec(spec.stored()), "pipeline": PIPELINE_VERSION})


@lru_cache(maxsize=256)
def _spec(spec: PreprocessSpec) -> dict:
    """A spec as its keys hash it (specs are frozen: decoded once per spec, not once per file; never mutated)."""
    return json.loads(spec.canonical_json())


def object_key(edf_digest: str, spec: PreprocessSpec, labels: str) -> str:
    """Key of one stored object (signal + mask): the signal key and the label key."""
    return _digest({"signal": signal_key(edf_digest, spec), "labels": labels})


def spec_digest(spec: PreprocessSpec) -> str:
    """Short identity of a spec, recorded per object so stats can group by it."""
    return _digest({"spec": _spec(spec), "pipeline": PIPELINE_VERSION})[:16]
