"""Per-file overhead: a tree of many short TUSZ-shaped files, ingested beside the floor on the same files.

Long recordings hide what ingest pays once per file (hashing, the object's files and fsyncs, the index
transaction, the claim); a short-segment corpus is dominated by it. The figure is the overhead per file,
``(ingest − floor) / files × workers``: the milliseconds one worker spends per file beyond reading and
preprocessing it (``bench.report.per_file_figures`` does the arithmetic)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.corpus import SEED, make_corpus
from bench.timing import run_child, summary

FILE_S = 30  # seconds per file: the short segments of issue 15's figure
WINDOW_S = STRIDE_S = 10.0  # a 60 s window would not fit a 30 s file: 3 windows per file, so their rows are paid


def corpus(out: Path, files: int, file_s: int = FILE_S, seed: int = SEED):
    """The tree of ``files`` files of ``file_s`` seconds (made once under ``out``, reused)."""
    return make_corpus(out, files * file_s / 3600, seed, file_s=file_s)


def measure(out: Path, files: int, workers: int, repeats: int, log: Callable[[str], None],
            file_s: int = FILE_S, seed: int = SEED) -> dict[str, Any]:
    """Floor and a fresh-cache ingest of the short-file tree with 1 worker and with ``workers``, each in a child
    process, interleaved round by round (floor, ingest) so that a noisy neighbour weighs on both alike."""
    tree = corpus(out, files, file_s, seed)
    work = Path(out) / "work"
    work.mkdir(parents=True, exist_ok=True)
    counts = sorted({1, workers})
    runs: dict[str, list[dict]] = {}
    for r in range(repeats):
        for w in counts:
            log(f"per-file round {r + 1}/{repeats}: floor and ingest of {tree.n_files} files of {file_s} s, "
                f"{w} worker(s)")
            runs.setdefault(f"floor/{w}", []).append(run_child("floor", {"src": str(tree.root), "workers": w}))
            cache = work / f"per-file-w{w}"
            shutil.rmtree(cache, ignore_errors=True)
            runs.setdefault(f"eegcache/{w}", []).append(run_child("ingest", {
                "src": str(tree.root), "cache": str(cache), "workers": w, "window_s": WINDOW_S,
                "stride_s": STRIDE_S}))
            shutil.rmtree(cache, ignore_errors=True)

    def entry(key: str) -> dict[str, Any]:
        return {"seconds": summary([x["seconds"] for x in runs[key]]), "runs": runs[key]}

    return {"corpus": tree.to_dict(), "files": tree.n_files, "file_s": file_s,
            "floor": {str(w): entry(f"floor/{w}") for w in counts},
            "eegcache": {str(w): entry(f"eegcache/{w}") for w in counts}}

