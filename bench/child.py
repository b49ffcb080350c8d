"""``python -m bench.child TASK JSON_ARGS``: one contender run in a fresh interpreter.

Prints one JSON line: the task's figures plus the peak resident memory of this process and of its workers, and the
CPU seconds the task took in both."""

from __future__ import annotations

import json
import resource
import sys

from bench import contenders

TASKS = {
    "floor": contenders.floor,
    "ingest": contenders.eegcache_ingest,
    "window_cache": contenders.build_window_cache,
}


def _cpu_seconds() -> float:
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def main(argv: list[str]) -> None:
    task, args = argv[0], json.loads(argv[1])
    # eegcache imports scipy.signal and zarr on first use (a no-op ingest never needs them); the child's imports
    # are not part of a build's time (braindecode's runner imports MNE before its clock too), so import them here.
    import scipy.signal  # noqa: F401
    import zarr  # noqa: F401

    before = _cpu_seconds()
    result = TASKS[task](**args)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result["rss_mb"] = {"process": own, "workers": workers}
    # CPU seconds of the task (this process and the workers it waited for): steadier than wall time on a shared
    # machine, though blind to time spent waiting (fsync, locks).
    result["cpu_seconds"] = _cpu_seconds() - before
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
