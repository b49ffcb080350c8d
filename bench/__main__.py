"""``python -m bench [--quick] [--hours H] [--out DIR] [--repeats N]``: run, write ``OUT/results.json`` (raw) and
``OUT/results.md`` (PASS/MISS list and table), print the table last. ``--only per-file`` measures the per-file
overhead alone (merged into a previous full run's results.json in the same ``--out``, else reported alone)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench import report
from bench.run import BenchConfig, rerun_per_file, rerun_reads, run_all


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="≈2 EEG-hours and a 1 M-window index (minutes, not tens)")
    p.add_argument("--hours", type=float, help="EEG-hours of synthetic corpus (default 20, quick 2)")
    p.add_argument("--out", type=Path, default=Path("bench/out"), help="output folder (default bench/out)")
    p.add_argument("--repeats", type=int, default=3, help="runs per timing, ≥ 1 (default 3)")
    p.add_argument("--index-windows", type=int, help="windows in the large synthetic index (default 10 M, quick 1 M)")
    p.add_argument("--workers", type=int, help="'all cores' worker count (default: os.cpu_count())")
    p.add_argument("--only", choices=["reads", "per-file"], help="reads: re-measure the read figures on the caches "
                   "and results.json that a previous run with the same --out/--hours left; per-file: measure only the "
                   "per-file overhead (many short files, ingest beside the floor)")
    p.add_argument("--per-file-files", type=int, help="files in the per-file-overhead tree (default 2,000, quick 300)")
    p.add_argument("--read-budget", type=float, help="seconds per random-read run (default 3, quick 0.5)")
    p.add_argument("--with-braindecode", action="store_true", help="run braindecode as a contender in its own venv, "
                   "made once under ~/.cache/eegcache-bench (~7 GB, a few minutes; see bench/braindecode_venv.py)")
    p.add_argument("--resume", action="store_true", help="continue a run that stopped part-way (same --out/--hours)")
    a = p.parse_args(argv)
    if a.repeats < 1:
        p.error("--repeats must be ≥ 1")
    overrides = {"out": a.out, "repeats": a.repeats, "only": a.only, "resume": a.resume,
                 "with_braindecode": a.with_braindecode}
    if a.read_budget is not None:
        overrides["read_budget_s"] = a.read_budget
    for key in ("hours", "index_windows", "workers", "per_file_files"):
        if getattr(a, key) is not None:
            overrides[key] = getattr(a, key)
    return BenchConfig.quick_config(**overrides) if a.quick else BenchConfig(**overrides)


def main(argv: list[str] | None = None, config: BenchConfig | None = None) -> dict:
    """Run the bench (``config`` overrides the command line: tests use it) and return the results."""
    cfg = config or parse_args(argv)
    path = Path(cfg.out) / "results.json"
    if cfg.only == "reads":
        results = rerun_reads(cfg, json.loads(path.read_text()))
    elif cfg.only == "per-file":
        previous = json.loads(path.read_text()) if path.is_file() else None
        full = previous is not None and "reads" in previous  # a full run's results: the per-file rows join them
        results = rerun_per_file(cfg, previous if full else None)
        if not full:
            results["targets"] = [t.to_dict() for t in report.per_file_targets(results)]
            results["derived"] = {"per_file": report.per_file_figures(results)}
            return _write(cfg, results, report.per_file_report(results) + "\n")
    else:
        results = run_all(cfg)
    results["targets"] = [t.to_dict() for t in report.targets(results)]
    results["derived"] = report.derived(results)
    return _write(cfg, results, f"{report.summary_lines(results)}\n\n{report.table(results)}\n")


def _write(cfg: BenchConfig, results: dict, text: str) -> dict:
    """results.json (raw), results.md (what is printed), and the text printed last."""
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    path = Path(cfg.out) / "results.json"
    path.write_text(json.dumps(results, indent=1, default=str))
    (Path(cfg.out) / "results.md").write_text(text)
    print(f"\nraw figures: {path}\n")
    print(text, end="")
    return results


if __name__ == "__main__":
    main()
