"""The public SQL API: three views whose columns stay stable while the tables behind them evolve.

The migrations create them (``migrations/versions``); these column lists are the contract the tests pin.
"""

from eegcache.pipeline.windows import LABELS  # noqa: F401 - label codes 0/1/2, re-exported for SQL users

WINDOW_LABELS_COLUMNS = (
    "window_id", "recording", "subject", "session", "split", "montage",
    "window_s", "stride_s", "start_s", "duration_s", "label", "seizure_fraction", "dataset", "pipeline",
)
RECORDING_STATUS_COLUMNS = (
    "recording", "source_path", "status", "reason", "n_windows", "dataset", "pipeline", "rel_path", "source",
)
SEIZURE_EVENTS_COLUMNS = (
    "recording", "dataset", "subject", "session", "split", "start_s", "stop_s", "event_type", "pipeline",
)
