"""eegcache: a content-addressed cache of preprocessed EEG windows whose manifest is a SQL query.

    import eegcache
    with eegcache.open("demo/cache") as cache:
        sel = cache.windows(split="train", stride_s=10)
        sel.counts()

``eegcache.torch`` (imported separately, it needs torch) gives ``WindowDataset`` and ``BalancedSampler``.
"""

from eegcache.cache import Cache, open
from eegcache.errors import EegcacheError, InputError, StateError
from eegcache.sampling import Ratios
from eegcache.selection import SelectionError, WindowSelection, WindowSetInfo

__all__ = [
    "Cache", "EegcacheError", "InputError", "Ratios", "SelectionError", "StateError", "WindowSelection",
    "WindowSetInfo", "open",
]
