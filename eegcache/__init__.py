"""eegcache: a content-addressed cache of preprocessed EEG windows whose manifest is a SQL query.

    import eegcache
    with eegcache.open("demo/cache") as cache:
        sel = cache.windows(split="train", stride_s=10)
        sel.counts()

``eegcache.torch`` (imported separately, it needs torch) gives ``WindowDataset`` and ``BalancedSampler``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from eegcache.errors import EegcacheError, InputError, StateError

if TYPE_CHECKING:
    from eegcache.cache import Cache, open
    from eegcache.sampling import Ratios
    from eegcache.selection import SelectionError, WindowSelection, WindowSetInfo

__all__ = [
    "Cache", "EegcacheError", "InputError", "Ratios", "SelectionError", "StateError", "WindowSelection",
    "WindowSetInfo", "open",
]

# Imported on first use: every submodule (the CLI's included) imports this package first, and these bring numpy and
# SQLAlchemy's ORM, which a command such as `eegcache ingest` of an unchanged tree would otherwise load for nothing.
_LAZY = {"Cache": "cache", "open": "cache", "Ratios": "sampling", "SelectionError": "selection",
         "WindowSelection": "selection", "WindowSetInfo": "selection"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'eegcache' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"eegcache.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
