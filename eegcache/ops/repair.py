"""Repair damaged objects by rebuilding them from their source EDFs (objects are pure functions of sources)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine

from eegcache.ops.verify import VerifyReport, damaged_sources
from eegcache.store import open_store
from eegcache.store.owner import require_owner


@dataclass
class RepairOutcome:
    repaired: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


def repair(engine: Engine, cache: Path, report: VerifyReport, store_url: str | None = None) -> RepairOutcome:
    """Delete each damaged object folder and re-ingest the recordings that use it from their sources."""
    from eegcache.ops.register import reingest_recordings

    outcome = RepairOutcome()
    store = open_store(cache, store_url)
    require_owner(engine, store, "repair")  # it removes and rebuilds objects: only with the store's own index
    for key, users in sorted(damaged_sources(engine, report).items()):
        present = [(rec_id, path) for rec_id, path in users if path.is_file()]
        if not present:
            gone = ", ".join(str(path) for _, path in users)
            outcome.messages.append(f"cannot repair object {key[:12]}: its source file(s) are gone: {gone}")
            continue
        store.remove(key)
        failed = reingest_recordings(engine, store, [rec_id for rec_id, _ in present])
        if failed:
            outcome.messages.append(f"object {key[:12]}: re-ingest failed: {'; '.join(failed)}")
        else:
            outcome.repaired.append(key)
            outcome.messages.append(f"repaired object {key[:12]} from {', '.join(str(p) for _, p in present)}")
    return outcome
