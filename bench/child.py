"""``python -m bench.child TASK JSON_ARGS``: one contender run in a fresh interpreter.

Prints one JSON line: the task's figures plus the peak resident memory of this process and of its workers."""

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


def main(argv: list[str]) -> None:
    task, args = argv[0], json.loads(argv[1])
    # eegcache imports scipy.signal on first use (a no-op ingest never needs it); the child's imports are not
    # part of a build's time (braindecode's runner imports MNE before its clock too), so import it here.
    import scipy.signal  # noqa: F401

    result = TASKS[task](**args)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result["rss_mb"] = {"process": own, "workers": workers}
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
