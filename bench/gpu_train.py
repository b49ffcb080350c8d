"""``python -m bench.gpu_train --out DIR [--hours H] [--gpus N] [--epochs E] [--batch-size B] [--workers W]``

Where does GPU training time go, and how does it scale? On a synthetic corpus (``eegcache.sources.synth``, ingested with
every core and missing electrodes zero-filled) this measures, in order:

1. the DataLoader alone: the trainer's ``WindowDataset`` over the first epoch's window ids, W worker processes,
   batch B, no model (windows/s after the first batch, so worker start-up is not counted);
2. the model step alone: the ``base`` preset on random tensors already on the GPU, bf16 autocast, batch B,
   forward + BCE + backward + clipping + AdamW step, a few warm-up steps, then synchronised timing;
3. ``trainer fit --model base --device cuda`` for E epochs on 1 GPU and, when N > 1, through torchrun on N GPUs
   (W loader workers per GPU, batch B per GPU), reading windows/s, ``data_wait_s`` and ``step_s`` of the last
   epoch from ``metrics.jsonl``.

It writes ``DIR/gpu_results.json`` (every figure) and ``DIR/gpu_results.md`` (a table, the scaling efficiency
``N-GPU windows/s / (N x 1-GPU windows/s)`` and a one-line verdict on the bottleneck). The corpus is kept in
``DIR/corpus-<H>h-s<stride>`` and reused by later runs with the same settings.

Epochs use the 60 s windows of the train split at a dense stride (default 0.25 s, so a few EEG-hours give tens of
thousands of windows) and every available window of each class (throughput does not depend on the class mix). Unless
``--max-windows-per-epoch`` is given, an epoch is capped so that one 1-GPU epoch takes about ``--epoch-seconds``
at the rate measured in steps 1-2: the whole script stays within a few minutes on an 8-GPU-class host.

Dry run on a machine without a GPU (checks the plumbing, the figures mean nothing):
``python -m bench.gpu_train --out /tmp/gpu-dry --dry`` (= ``--device cpu --model tiny --hours 0.3 --gpus 2``,
gloo instead of NCCL).

Nothing here sets NCCL variables; NVLink multicast stays as the environment has it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WINDOW_S = 60.0
RATIOS = "partial=1,full=1000,background=1000"  # every available window of the selection
SEED = 0


def log(msg: str) -> None:
    print(f"[gpu_train {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cores = os.cpu_count() or 1
    p = argparse.ArgumentParser(prog="python -m bench.gpu_train", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="output folder (corpus, runs, gpu_results.json/.md)")
    p.add_argument("--hours", type=float, help="EEG-hours of synthetic corpus (default 4; 0.3 with --dry)")
    p.add_argument("--gpus", type=int, help="GPUs for the multi-GPU run (default: every visible GPU; 1 skips it)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per trainer fit run (default 2; the last is reported)")
    p.add_argument("--batch-size", type=int, default=32, help="windows per batch per GPU (default 32)")
    p.add_argument("--workers", type=int, help="DataLoader workers per GPU (default: cores / GPUs - 1, at most 16)")
    p.add_argument("--stride", type=float, default=0.25,
                   help="window stride in s (default 0.25: ~14,000 60 s windows per EEG-hour, long enough epochs)")
    p.add_argument("--max-windows-per-epoch", type=int,
                   help="cap per epoch (default: about --epoch-seconds of 1-GPU training; 0: no cap)")
    p.add_argument("--epoch-seconds", type=float, default=30.0, help="target 1-GPU epoch length (default 30)")
    p.add_argument("--loader-seconds", type=float, default=20.0, help="time limit of the loader-alone pass")
    p.add_argument("--step-seconds", type=float, default=10.0, help="timed part of the step-alone pass")
    p.add_argument("--fit-timeout", type=float, default=420.0, help="seconds before a fit run is killed")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--model", choices=["base", "tiny"], default="base")
    p.add_argument("--dry", action="store_true",
                   help="plumbing check without a GPU: --device cpu --model tiny --hours 0.3 --gpus 2, short passes")
    a = p.parse_args(argv)
    if a.dry:
        a.device, a.model, a.hours, a.gpus = "cpu", "tiny", a.hours or 0.3, a.gpus or 2
        a.epoch_seconds, a.loader_seconds, a.step_seconds = 5.0, 3.0, 2.0
        a.batch_size = min(a.batch_size, 8)
    a.hours = a.hours or 4.0
    if a.gpus is None:
        a.gpus = max(1, _cuda_count()) if a.device == "cuda" else 1
    if a.workers is None:
        a.workers = max(1, min(16, cores // a.gpus - 1))
    if a.gpus < 1 or a.epochs < 1 or a.batch_size < 1 or a.workers < 0 or a.hours <= 0 or a.stride <= 0:
        p.error("--gpus, --epochs, --batch-size must be >= 1; --workers >= 0; --hours and --stride > 0")
    return a


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


# ----------------------------------------------------------------------------------------------------------------
# Corpus


def build_corpus(out: Path, hours: float, stride_s: float) -> tuple[Path, dict]:
    """Synthesise and ingest (once per settings); returns the cache folder and what was done."""
    from eegcache.ops.ingest import ingest
    from eegcache.pipeline.spec import IngestConfig, PreprocessSpec
    from eegcache.sources.synth import synthesize

    root = out / f"corpus-{hours:g}h-s{stride_s:g}"
    cache, marker = root / "cache", root / "done.json"
    if marker.is_file():
        info = json.loads(marker.read_text())
        log(f"reusing corpus {root} ({info['hours']:g} EEG-h, {info['windows']:,} windows)")
        return cache, {**info, "reused": True}
    t0 = time.perf_counter()
    recordings = synthesize(root / "tree", hours, SEED, quick_signal=True)
    synth_s = time.perf_counter() - t0
    config = IngestConfig(spec=PreprocessSpec(missing_electrodes="zero"), window_s=WINDOW_S, stride_s=stride_s,
                          workers=os.cpu_count() or 1)
    t1 = time.perf_counter()
    summary = ingest(root / "tree", cache, config, progress=False)
    ingest_s = time.perf_counter() - t1
    info = {"hours": sum(r.duration_s for r in recordings) / 3600, "recordings": len(recordings),
            "synth_s": synth_s, "ingest_s": ingest_s, "ingest_workers": config.workers,
            "ingested": summary.ingested, "failed": summary.failed, "window_counts": summary.window_counts,
            "windows": sum(summary.window_counts.values()), "stride_s": stride_s}
    marker.write_text(json.dumps(info, indent=2))
    log(f"corpus: {info['hours']:.2f} EEG-h, {len(recordings)} files, synth {synth_s:.1f} s, ingest {ingest_s:.1f} s "
        f"({config.workers} workers), {info['windows']:,} windows, {summary.failed} failed")
    return cache, {**info, "reused": False}


def make_sampler(cache: Path, stride_s: float, max_windows: int | None):
    from trainer.sampling import EpochSampler, Ratios, Selection

    selection = Selection(WINDOW_S, stride_s, "train", allow_incomplete=True)
    return EpochSampler(cache, selection, Ratios.parse(RATIOS), SEED, max_windows=max_windows)


# ----------------------------------------------------------------------------------------------------------------
# 1. The DataLoader alone


def measure_loader(cache: Path, ids, batch_size: int, workers: int, pin: bool, limit_s: float) -> dict:
    import torch

    from trainer.data import WindowDataset, seed_worker

    dataset = WindowDataset(cache, ids)
    generator = torch.Generator()
    generator.manual_seed(SEED)
    loader = dataset.loader(batch_size, num_workers=workers, pin_memory=pin, worker_init_fn=seed_worker,
                            generator=generator)
    t0 = time.perf_counter()
    first_s, t_first, windows, batches, capped = None, None, 0, 0, False
    iterator = iter(loader)
    for batch, _mask in iterator:
        now = time.perf_counter()
        if first_s is None:
            first_s, t_first = now - t0, now  # worker start-up and the first batch: not in the rate
        else:
            windows += batch.shape[0]
            batches += 1
        if now - t0 > limit_s:
            capped = True
            break
    end = time.perf_counter()
    del iterator  # shuts the workers down
    seconds = end - t_first if t_first is not None else 0.0
    rate = windows / seconds if seconds > 0 and windows else None
    result = {"workers": workers, "batch_size": batch_size, "pin_memory": pin, "windows_timed": windows,
              "batches_timed": batches, "seconds": seconds, "first_batch_s": first_s, "windows_per_s": rate,
              "stopped_at_time_limit": capped, "window_mb": round(19 * dataset.window_samples * 4 / 2**20, 3)}
    log(f"loader alone: {_num(rate)} windows/s ({workers} workers, batch {batch_size}; first batch "
        f"{_num(first_s, '.2f')} s)")
    return result


# ----------------------------------------------------------------------------------------------------------------
# 2. The model step alone


def measure_step(model_name: str, device_name: str, batch_size: int, window: int, seconds: float,
                 warmup: int = 5) -> dict:
    import torch

    from trainer.model import build_model, count_parameters

    device = torch.device(device_name)
    if device.type == "cpu":
        torch.set_num_threads(1)  # as each trainer process runs (OMP_NUM_THREADS=1), so the figures compare
    torch.manual_seed(SEED)
    model = build_model(model_name).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    x = torch.randn(batch_size, 19, window, device=device)
    y = (torch.rand(batch_size, window, device=device) > 0.8).float()
    cuda = device.type == "cuda"
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else None
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def step() -> None:
        if amp is not None:
            with amp():
                logits = model(x)
        else:
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    warm_s = time.perf_counter() - t0
    steps, t1 = 0, time.perf_counter()
    while True:
        step()
        steps += 1
        if steps % 5 == 0 or not cuda:
            sync()
            if time.perf_counter() - t1 >= seconds:
                break
    sync()
    elapsed = time.perf_counter() - t1
    result = {"model": model_name, "parameters": count_parameters(model), "batch_size": batch_size,
              "window_samples": window, "device": str(device), "bf16_autocast": cuda, "warmup_steps": warmup,
              "warmup_s": warm_s, "steps": steps, "seconds": elapsed, "ms_per_step": 1000 * elapsed / steps,
              "windows_per_s": steps * batch_size / elapsed,
              "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None}
    log(f"model step alone: {result['windows_per_s']:,.0f} windows/s ({result['ms_per_step']:.1f} ms per step of "
        f"{batch_size}, {model_name}, {result['parameters']:,} parameters)")
    return result


# ----------------------------------------------------------------------------------------------------------------
# 3. trainer fit, 1 GPU and N GPUs


def fit_command(n: int, cache: Path, run: Path, a: argparse.Namespace, max_windows: int | None) -> list[str]:
    args = ["--cache", str(cache), "--out", str(run), "--model", a.model, "--device", a.device,
            "--epochs", str(a.epochs), "--batch-size", str(a.batch_size), "--workers", str(a.workers),
            "--split", "train", "--window", f"{WINDOW_S:g}", "--stride", f"{a.stride:g}", "--ratios", RATIOS,
            "--allow-incomplete", "--seed", str(SEED), "--val-split", "dev", "--quiet"]
    if max_windows:
        args += ["--max-windows-per-epoch", str(max_windows)]
    if n == 1:
        return [sys.executable, "-m", "trainer", "fit", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
            "-m", "trainer", "fit", *args]


def run_fit(n: int, cache: Path, out: Path, a: argparse.Namespace, max_windows: int | None) -> dict:
    label = f"{n}gpu" if a.device == "cuda" else f"{n}proc"
    run = out / "runs" / label
    if run.exists():
        import shutil

        shutil.rmtree(run)
    run.parent.mkdir(parents=True, exist_ok=True)
    cmd = fit_command(n, cache, run, a, max_windows)
    log_path = out / f"fit-{label}.log"
    log(f"trainer fit on {_units(n, a.device)}: {' '.join(cmd[1:])}")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(ROOT), env.get("PYTHONPATH")) if x)
    env.setdefault("OMP_NUM_THREADS", "1")  # what torchrun gives each rank: 1 and N processes run alike
    t0 = time.perf_counter()
    with open(log_path, "w") as logf:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=a.fit_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)  # the group this script started: torchrun and its ranks
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc = None
    wall = time.perf_counter() - t0
    lines = []
    metrics = run / "metrics.jsonl"
    if metrics.is_file():
        lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    result: dict = {"processes": n, "command": cmd, "log": str(log_path), "returncode": rc, "timed_out": rc is None,
                    "wall_s": wall, "epochs": [_epoch_fields(r) for r in lines]}
    if rc != 0 or not lines:
        tail = log_path.read_text()[-2000:] if log_path.is_file() else ""
        log(f"trainer fit on {n} failed (exit {rc}); log {log_path}:\n{tail}")
        return result
    last = result["epochs"][-1]
    result.update(last=last, windows_per_s=last["windows_per_s"])
    log(f"trainer fit on {n}: {_num(last['windows_per_s'])} windows/s (epoch {last['epoch']}: data wait "
        f"{last['data_wait_s']:.2f} s, step {last['step_s']:.2f} s, {last['windows']:,} windows in "
        f"{last['train_seconds']:.1f} s), wall {wall:.0f} s")
    return result


def _units(n: int, device: str) -> str:
    unit = "GPU" if device == "cuda" else "process"
    return f"{n} {unit}" + ("" if n == 1 else "s" if device == "cuda" else "es")


def _epoch_fields(r: dict) -> dict:
    keys = ("epoch", "world_size", "windows", "windows_per_s", "train_seconds", "data_wait_s", "step_s",
            "val_seconds", "train_loss")
    out = {k: r.get(k) for k in keys}
    busy = (r.get("data_wait_s") or 0) + (r.get("step_s") or 0)
    out["data_wait_fraction"] = (r.get("data_wait_s") or 0) / busy if busy > 0 else None
    return out


# ----------------------------------------------------------------------------------------------------------------
# Verdict and report


def _num(value: float | None, spec: str = ",.0f") -> str:
    return "n/a" if value is None else format(value, spec)


def _bottleneck(fraction: float | None, device: str) -> str:
    """Which side limits training, from the share of the loop spent waiting for the DataLoader."""
    if fraction is None:
        return "unknown"
    if fraction >= 0.25:
        return "the data loader"
    if fraction <= 0.10:
        return "the GPU (model step)" if device == "cuda" else "the model step"
    return "both (the loop waits for data part of the time)"


def verdict(results: dict) -> str:
    """One line: the bottleneck of the widest run, then the figures behind it."""
    loader, step = results["loader_alone"].get("windows_per_s"), results["step_alone"].get("windows_per_s")
    device, c = results["config"]["device"], results["config"]
    runs = [r for r in (results.get("fit_n"), results["fit_1"]) if r and r.get("last")]
    if not runs:
        return "no trainer fit figures (see the logs)"
    widest = runs[0]
    parts = [f"bottleneck at {_units(widest['processes'], device)}: "
             f"{_bottleneck(widest['last']['data_wait_fraction'], device)}"]
    waits = ", ".join(f"{_units(r['processes'], device)} {100 * (r['last']['data_wait_fraction'] or 0):.0f}%"
                      for r in reversed(runs))
    parts.append(f"time waiting for data: {waits}")
    if results.get("scaling_efficiency") is not None:
        parts.append(f"scaling efficiency {100 * results['scaling_efficiency']:.0f}%")
    if loader and step:
        parts.append(f"alone: loader {loader:,.0f} windows/s ({c['workers']} workers) vs model step {step:,.0f} "
                     f"windows/s (batch {c['batch_size']}) per {'GPU' if device == 'cuda' else 'process'}")
    return "; ".join(parts)


def _pct(x: float | None) -> float | None:
    return None if x is None else 100 * x


def markdown(results: dict) -> str:
    c, corpus = results["config"], results["corpus"]
    unit = "GPU" if c["device"] == "cuda" else "process"
    rows = [("DataLoader alone", results["loader_alone"].get("windows_per_s"),
             f"{c['workers']} workers, batch {c['batch_size']}, first batch "
             f"{_num(results['loader_alone'].get('first_batch_s'), '.2f')} s"),
            ("model step alone", results["step_alone"].get("windows_per_s"),
             f"{c['model']}, batch {c['batch_size']}, {results['step_alone']['ms_per_step']:.1f} ms/step"
             + (", bf16" if results["step_alone"]["bf16_autocast"] else ""))]
    for key in ("fit_1", "fit_n"):
        run = results.get(key)
        if not run:
            continue
        if run.get("last"):
            e = run["last"]
            note = (f"epoch {e['epoch']}: {e['windows']:,} windows in {e['train_seconds']:.1f} s; data_wait_s "
                    f"{e['data_wait_s']:.2f}, step_s {e['step_s']:.2f} (mean per rank)")
        else:
            note = f"failed (exit {run['returncode']}), see {run['log']}"
        rows.append((f"trainer fit, {_units(run['processes'], c['device'])}",
                     run.get("windows_per_s"), note))
    lines = [f"# GPU training throughput ({results['machine']['gpu_name'] or c['device']})", "",
             f"Corpus: {corpus['hours']:.2f} EEG-h synthetic ({corpus['recordings']} files), 60 s windows at "
             f"{c['stride']:g} s stride, train split, every window per class; {results['epoch_windows']:,} windows "
             f"per epoch. {c['epochs']} epochs per fit; figures from the last. Batch {c['batch_size']} per "
             f"{unit}, {c['workers']} loader workers per {unit}. torch {results['machine']['torch']}, "
             f"{results['machine']['cpu_count']} CPU cores.", "",
             "| measurement | windows/s | notes |", "|---|---:|---|"]
    lines += [f"| {name} | {_num(rate)} | {note} |" for name, rate, note in rows]
    lines += ["", f"Scaling efficiency ({_units(c['gpus'], c['device'])} ÷ ({c['gpus']} × {_units(1, c['device'])})): "
              f"{_num(_pct(results.get('scaling_efficiency')), '.0f')}%", "",
              f"**Verdict:** {results['verdict']}", ""]
    return "\n".join(lines)


def machine_info() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "gpu_count": torch.cuda.device_count() if cuda else 0,
            "gpu_name": torch.cuda.get_device_name(0) if cuda else None,
            "nccl_nvls_enable": os.environ.get("NCCL_NVLS_ENABLE"), "host": platform.node()}


# ----------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    if a.device == "cuda" and _cuda_count() < a.gpus:
        raise SystemExit(f"--gpus {a.gpus} but torch sees {_cuda_count()} CUDA device(s); use --dry without a GPU")
    machine = machine_info()
    log(f"{machine['gpu_count']} GPU(s) {machine['gpu_name'] or ''}, {machine['cpu_count']} cores, torch "
        f"{machine['torch']}; --gpus {a.gpus} --workers {a.workers} --batch-size {a.batch_size} --epochs {a.epochs}")
    cache, corpus = build_corpus(out, a.hours, a.stride)

    sampler = make_sampler(cache, a.stride, None)
    full_epoch = sampler.epoch_size()
    window = sampler.window_set.window_samples
    loader = measure_loader(cache, sampler.draw(0).ids, a.batch_size, a.workers, a.device == "cuda", a.loader_seconds)
    step = measure_step(a.model, a.device, a.batch_size, window, a.step_seconds)
    if a.device == "cuda":
        import torch

        torch.cuda.empty_cache()  # the step pass's model and tensors are gone; give their memory back to the runs

    if a.max_windows_per_epoch is not None:
        cap = a.max_windows_per_epoch or None
    else:
        rate = min(r for r in (loader["windows_per_s"], step["windows_per_s"]) if r) if (
            loader["windows_per_s"] or step["windows_per_s"]) else None
        cap = max(a.batch_size * a.gpus * 10, math.ceil(rate * a.epoch_seconds)) if rate else None
    epoch_windows = min(full_epoch, cap) if cap else full_epoch
    log(f"epoch: {epoch_windows:,} of {full_epoch:,} train windows" + (f" (capped at {cap:,})" if cap else ""))
    cap = cap if cap and cap < full_epoch else None

    fit_1 = run_fit(1, cache, out, a, cap)
    fit_n = run_fit(a.gpus, cache, out, a, cap) if a.gpus > 1 else None
    efficiency = None
    if fit_n and fit_n.get("windows_per_s") and fit_1.get("windows_per_s"):
        efficiency = fit_n["windows_per_s"] / (a.gpus * fit_1["windows_per_s"])
    results = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
               "machine": machine, "corpus": corpus, "ratios": RATIOS, "epoch_windows": epoch_windows,
               "full_epoch_windows": full_epoch, "loader_alone": loader, "step_alone": step, "fit_1": fit_1,
               "fit_n": fit_n, "scaling_efficiency": efficiency}
    results["verdict"] = verdict(results)
    results["total_s"] = time.perf_counter() - t_start
    (out / "gpu_results.json").write_text(json.dumps(results, indent=2))
    (out / "gpu_results.md").write_text(markdown(results))
    log(f"verdict: {results['verdict']}")
    log(f"wrote {out / 'gpu_results.json'} and {out / 'gpu_results.md'} in {results['total_s']:.0f} s")
    failed = fit_1.get("returncode") != 0 or (fit_n is not None and fit_n.get("returncode") != 0)
    if failed:
        raise SystemExit(1)
    return results


if __name__ == "__main__":
    main()
