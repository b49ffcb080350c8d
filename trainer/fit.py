"""The training loop: SQL-drawn epochs, per-sample BCE, AdamW with a per-step cosine schedule, validation by event F1,
and checkpoints from which ``--resume`` reproduces an uninterrupted run.

Reproducibility rests on one rule: everything random in epoch e is seeded from (seed, e) at the start of the epoch:
the epoch draw, torch/numpy/python RNGs (dropout), the DataLoader's generator and worker seeds, augmentation (per
window id). A checkpoint therefore needs only the model, optimiser and scheduler state to continue bit-for-bit; the
RNG states are stored as well, for inspection and for code that draws between epochs.

Under torchrun (``trainer.distributed``) the same loop runs on every rank with DistributedDataParallel: each rank
trains on its shard of the same epoch draw (``--batch-size`` is per rank: the global batch is N x B), losses and
throughput are reduced over ranks, validation is split across ranks and gathered, and rank 0 alone writes the run
folder. A run is reproducible for a fixed number of ranks; ``--resume`` refuses a different number.

Each metrics.jsonl line also holds the epoch's timing profile (``data_wait_s``: time the loop waited for the
DataLoader; ``step_s``: transfer, forward, backward and optimiser step, synchronised on CUDA; both means over
ranks). They describe how the epoch ran rather than what it computed, so :class:`FitResult` keeps them apart
(``profiles``) from the records in ``history``, which an interrupted and resumed run reproduces exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from eegcache.errors import StateError
from eegcache.pipeline.preprocess import window_transform
from trainer import distributed
from trainer.data import Augment, WindowDataset, seed_worker
from trainer.fingerprint import differences, selection_fingerprint
from trainer.metrics import f1_key
from trainer.model import build_model, count_parameters
from trainer.postprocess import Cover, PostProcess
from trainer.predict import is_short, split_recordings, validate
from trainer.reference import ReferenceWeightsError, load_initial_weights
from trainer.sampling import EpochSampler, Ratios, Selection

CHECKPOINT_FORMAT = "trainer-checkpoint/1"
METRICS_FILE = "metrics.jsonl"
LAST, BEST = "last.pt", "best.pt"
# Per-epoch timings written to metrics.jsonl beside each record (they vary from run to run; see the module doc).
PROFILE_FIELDS = ("data_wait_s", "step_s")


class FitError(StateError):
    """Training cannot start or continue as asked; the message says why."""


@dataclass(frozen=True)
class TrainConfig:
    """The full configuration of a run; stored in every checkpoint."""

    cache: str
    out: str
    epochs: int = 10
    batch_size: int = 16
    workers: int = 0
    reader: str = "auto"  # the window-reading library (eegcache.store.reader): auto | direct | tensorstore | zarrs | zarr
    model: str = "tiny"
    seed: int = 0
    device: str = "cpu"
    lr: float = 1e-3
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    warmup_frac: float = 0.05
    min_lr_ratio: float = 0.01
    split: str | None = "train"
    val_split: str | None = "dev"
    window_s: float = 60.0
    stride_s: float = 60.0
    where: str | None = None
    params: tuple[tuple[str, str], ...] = ()
    ratios: str = Ratios().text()
    allow_incomplete: bool = False
    threshold: float = 0.8
    morph_samples: int = 5
    min_event_s: float = 2.0
    max_windows_per_epoch: int | None = None
    augment: bool = False
    val_batch_size: int = 16
    pipeline: str | None = None  # None: the cache's only pipeline
    db: str | None = None  # the index's URL when it is not CACHE/index.sqlite (e.g. PostgreSQL)
    store: str | None = None  # the objects' URL when they are not in the cache folder (e.g. s3://bucket/prefix)
    # Added with recipes (trainer.recipes); the defaults are the trainer's behaviour before them.
    optimizer: str = "adamw"  # adamw | radam
    schedule: str = "cosine"  # cosine (warm-up + cosine per step) | constant
    redraw: str = "epoch"  # epoch: a new balanced draw every epoch; once: epoch 0's draw every epoch
    precision: str = "bf16"  # bf16 autocast on CUDA | fp32 (no autocast); CPU is always fp32
    init_from: str | None = None  # initial weights: a trainer checkpoint or the reference's state dict
    eval_tail: str = "end-aligned"  # end-aligned | zero-pad (see trainer.postprocess.cover_starts)
    strict_threshold: bool = False  # events where probability > threshold (the reference) instead of >=
    skip_short: bool = False  # skip recordings shorter than one window in validation/evaluation (the reference)
    recipe: str | None = None  # the recipe's name and version ("seizure-transformer/1"), None: none used
    recipe_file: str | None = None  # where the recipe was read from
    overrides: tuple[str, ...] = ()  # fields given on the command line that differ from the recipe's

    # Fields that may change between a run and its resumption without changing the result (where the cache lives,
    # how many loader processes, the device; a different device changes rounding but not the run's definition).
    NOT_RUN_DEFINING = ("cache", "db", "store", "out", "workers", "reader", "device", "val_batch_size", "recipe_file",
                        "overrides", "init_from")
    CHOICES = {"optimizer": ("adamw", "radam"), "schedule": ("cosine", "constant"), "redraw": ("epoch", "once"),
               "precision": ("bf16", "fp32"), "eval_tail": ("end-aligned", "zero-pad")}

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.workers < 0:
            raise ValueError("epochs and batch_size must be >= 1 and workers >= 0")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        Ratios.parse(self.ratios)
        PostProcess(self.threshold, self.morph_samples, self.min_event_s)
        for name, allowed in self.CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        object.__setattr__(self, "overrides", tuple(self.overrides))

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["params"] = [list(p) for p in self.params]
        data["overrides"] = list(self.overrides)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["params"] = tuple(tuple(p) for p in values.get("params", ()))
        values["overrides"] = tuple(values.get("overrides", ()))
        return cls(**values)

    def selection(self) -> Selection:
        return Selection(self.window_s, self.stride_s, self.split, self.where, self.params, self.allow_incomplete,
                         self.pipeline)

    def postprocess(self) -> PostProcess:
        return PostProcess(self.threshold, self.morph_samples, self.min_event_s, strict=self.strict_threshold)

    def cover(self) -> Cover:
        """How validation and evaluation cover a recording with windows."""
        return Cover(tail=self.eval_tail, skip_short=self.skip_short)


@dataclass
class FitResult:
    run_dir: Path
    epochs_done: int
    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_f1: float | None = None
    parameters: int = 0
    profiles: list[dict] = field(default_factory=list)  # per epoch: data_wait_s, step_s (as in metrics.jsonl)
    world_size: int = 1


# ----------------------------------------------------------------------------------------------------------------
# Seeds, schedule, devices


def _derive(seed: int, epoch: int, purpose: int, rank: int = 0) -> int:
    entropy = [seed, epoch, purpose] if rank == 0 else [seed, epoch, purpose, rank]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> torch.Generator:
    """Seed torch, numpy and python for epoch ``epoch``; return the DataLoader's generator for it. Each distributed
    rank gets its own streams (rank 0's are the single-process ones), so ranks do not share dropout masks."""
    s = _derive(seed, epoch, 1, rank)
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)
    generator = torch.Generator()
    generator.manual_seed(_derive(seed, epoch, 2, rank))
    return generator


def rng_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [name, keys.tolist(), pos, has_gauss, cached],
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate(_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def cosine_schedule(total_steps: int, warmup_frac: float, min_ratio: float) -> Callable[[int], float]:
    """Linear warm-up then cosine decay to ``min_ratio`` x lr, per optimiser step."""
    warmup = max(1, round(warmup_frac * total_steps)) if warmup_frac > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _constant(_step: int) -> float:
    """The reference's schedule: the learning rate never changes."""
    return 1.0


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise FitError(f"--device cuda: torch {torch.__version__} sees no CUDA device; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise FitError(f"--device must be cpu or cuda, got {name!r}")
    return torch.device(name)


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints and the metrics log


def _atomic_save(obj: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path | str) -> dict:
    """A checkpoint as a dict (``config``, ``model_config``, ``model``, ``optimizer``, ``scheduler``, ``epoch``,
    ``rng``...). Loaded with ``weights_only=True``: no pickled code runs."""
    path = Path(path)
    if not path.is_file():
        raise FitError(f"no checkpoint at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise FitError(f"{path} is not a trainer checkpoint (format {state.get('format')!r})")
    return state


def _read_metrics(path: Path, up_to_epoch: int) -> list[dict]:
    """Lines of earlier epochs; lines past the checkpoint (written before a crash) are dropped, they will be redone."""
    if not path.is_file():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [rec for rec in lines if rec.get("epoch", 0) <= up_to_epoch]


def _write_metrics(path: Path, records: list[dict], profiles: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(_line(r, p)) + "\n" for r, p in zip(records, profiles, strict=True)))
    os.replace(tmp, path)


def _line(record: dict, profile: dict) -> dict:
    """A metrics.jsonl line: the record with the timing profile placed after ``train_seconds``."""
    out: dict = {}
    for key, value in record.items():
        out[key] = value
        if key == "train_seconds":
            out.update(profile)
    return {**out, **profile}


def _split_profile(line: dict) -> tuple[dict, dict]:
    return ({k: v for k, v in line.items() if k not in PROFILE_FIELDS},
            {k: line[k] for k in PROFILE_FIELDS if k in line})


def resume_config(run_dir: Path | str, overrides: dict | None = None) -> TrainConfig:
    """The stored run's configuration with ``overrides`` applied; refuses overrides that would change the run."""
    if not (Path(run_dir) / LAST).is_file():
        raise FitError(f"nothing to resume in {run_dir}: no {LAST}")
    state = load_checkpoint(Path(run_dir) / LAST)
    stored = TrainConfig.from_dict(state["config"])
    overrides = dict(overrides or {})
    if "params" in overrides:
        overrides["params"] = tuple(tuple(p) for p in overrides["params"])
    changed = {k: v for k, v in overrides.items()
               if k not in TrainConfig.NOT_RUN_DEFINING and getattr(stored, k) != v}
    if changed:
        desc = ", ".join(f"{k} {v!r} (stored {getattr(stored, k)!r})" for k, v in sorted(changed.items()))
        raise FitError(f"--resume continues the stored run in {run_dir} exactly; these options differ from it: {desc}. "
                       "Drop them, or start a new run in another --out")
    return dataclasses.replace(stored, **{k: v for k, v in overrides.items() if k in TrainConfig.NOT_RUN_DEFINING})


# ----------------------------------------------------------------------------------------------------------------
# The loop


def fit(config: TrainConfig, *, resume: bool = False, stop_after: int | None = None,
        log: Callable[[str], None] = print, progress: bool = True,
        accept_changed_selection: bool = False) -> FitResult:
    """Train (or continue) the run in ``config.out``. ``stop_after`` ends this call after that many epochs (a
    time-boxed job, or a test of resumption); the run continues later with ``resume=True``.

    Checkpoints hold a fingerprint of the selection (``trainer.fingerprint``); ``resume`` refuses, saying what
    changed, when the cache now selects other windows, unless ``accept_changed_selection`` (then the first
    metrics line of the resumed epochs carries ``selection_changed``)."""
    try:
        rank, world_size, _ = distributed.env_world()
    except distributed.DistributedError as exc:
        raise FitError(str(exc)) from None
    if rank != 0:  # rank 0 speaks for the run
        log, progress = (lambda _line: None), False
    run_dir = Path(config.out)
    last_path = run_dir / LAST
    state = None
    if resume:
        if not last_path.is_file():
            raise FitError(f"nothing to resume in {run_dir}: no {LAST}")
        state = load_checkpoint(last_path)
        config = resume_config(run_dir, dataclasses.asdict(config))
        stored_world = int(state.get("world_size", 1))
        if stored_world != world_size:
            raise FitError(f"--resume continues the stored run in {run_dir} exactly; it was trained by {stored_world} "
                           f"process(es) and this is {world_size}. Resume with the same number (torchrun "
                           f"--nproc_per_node={stored_world}, or trainer fit --nproc {stored_world})")
    elif last_path.exists():
        raise FitError(f"{run_dir} already holds a run ({LAST}); pass --resume to continue it, or choose another --out")
    device = resolve_device(config.device)
    sampler = EpochSampler(config.cache, config.selection(), Ratios.parse(config.ratios), config.seed, db=config.db,
                           max_windows=config.max_windows_per_epoch)
    for line in sampler.describe():
        log(line)
    fingerprint = selection_fingerprint(sampler)
    selection_note = _check_selection(run_dir, state, fingerprint, accept_changed_selection, log) if state else None
    window = sampler.window_set.window_samples
    val_recordings = (split_recordings(Path(config.cache), config.val_split, pipeline=sampler.window_set.pipeline,
                                       db=config.db)
                      if config.val_split else [])
    if config.skip_short:
        short = [r for r in val_recordings if is_short(r, window)]
        if short:
            log(f"validation skips {len(short)} recording(s) of split {config.val_split!r} shorter than one window "
                f"({window} samples), as asked (skip_short)")
        val_recordings = [r for r in val_recordings if not is_short(r, window)]
    if config.val_split and not val_recordings:
        log(f"warning: no ingested recordings in validation split {config.val_split!r}; "
            "best.pt follows the training loss instead of event F1")
    run_dir.mkdir(parents=True, exist_ok=True)

    try:
        world, device = distributed.init(config.device) if world_size > 1 else (distributed.World(), device)
    except distributed.DistributedError as exc:
        raise FitError(str(exc)) from None
    deterministic = torch.are_deterministic_algorithms_enabled()
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _train(config, sampler, window, val_recordings, device, state, stop_after, log, progress, world,
                      fingerprint=fingerprint, selection_note=selection_note)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        distributed.shutdown(world)


def _check_selection(run_dir: Path, state: dict, fingerprint: dict, accept: bool,
                     log: Callable[[str], None]) -> dict | None:
    """Compare the checkpoint's selection with the cache's now; refuse a changed one unless ``accept``. Returns the
    note for the metrics log when a change was accepted."""
    stored = state.get("selection")
    if stored is None:
        log(f"warning: {run_dir / LAST} holds no selection fingerprint (written by an older trainer); "
            "cannot check that the cache still selects the same windows")
        return None
    changes = differences(stored, fingerprint)
    if not changes:
        return None
    what = "; ".join(changes)
    if not accept:
        raise FitError(f"--resume: the cache now selects other windows than the run in {run_dir} was trained on "
                       f"({what}). The resumed run would not be the run it continues. Restore the cache, start a new "
                       "run in another --out, or pass --accept-changed-selection to continue on the new selection "
                       "(recorded in metrics.jsonl)")
    log(f"warning: continuing on a changed selection (--accept-changed-selection): {what}")
    return {"accepted": True, "after_epoch": int(state["epoch"]), "changes": changes,
            "before": {k: stored.get(k) for k in ("classes", "recordings", "epoch_windows")},
            "after": {k: fingerprint[k] for k in ("classes", "recordings", "epoch_windows")}}


def _train(config: TrainConfig, sampler: EpochSampler, window: int, val_recordings: list, device: torch.device,
           state: dict | None, stop_after: int | None, log: Callable[[str], None], progress: bool,
           world: distributed.World | None = None, *, fingerprint: dict | None = None,
           selection_note: dict | None = None) -> FitResult:
    world = world or distributed.World()
    run_dir = Path(config.out)
    # One dataset over the whole selection, its windows located once; each epoch indexes into it. The pipeline's
    # read-time steps (a declared window_filter) are applied as windows are read, in training and validation.
    transform = window_transform(sampler.windows.pipeline_spec())
    augment = Augment(seed=config.seed) if config.augment else None
    dataset = WindowDataset(config.cache, sampler.windows.ids, augment=augment, db=config.db, selection=sampler.windows,
                            read_transform=transform, reader=config.reader, store=config.store)
    channels = dataset.channels  # 19 referential, 18 double banana...: the model takes what is stored
    torch.manual_seed(config.seed)  # the initial weights (the same on every rank; DDP broadcasts rank 0's anyway)
    model = build_model(config.model, in_channels=channels).to(device)
    if config.init_from and state is None:
        try:
            log(load_initial_weights(model, config.init_from))
        except ReferenceWeightsError as exc:
            raise FitError(str(exc)) from None
    net: torch.nn.Module = model  # what the training step calls: the model itself, or its DDP wrapper
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.optimizer == "radam":  # the reference: RAdam with (coupled, L2) weight decay
        optimizer = torch.optim.RAdam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    per_rank = -(-sampler.epoch_size() // world.world_size)  # shards are padded to equal sizes
    padded = per_rank * world.world_size - sampler.epoch_size()  # windows each epoch repeats to pad them (sampling.shard)
    steps_per_epoch = math.ceil(per_rank / config.batch_size)
    schedule = (cosine_schedule(steps_per_epoch * config.epochs, config.warmup_frac, config.min_lr_ratio)
                if config.schedule == "cosine" else _constant)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    start, best_score, best_epoch = 0, -math.inf, None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start, best_score, best_epoch = state["epoch"], state["best_score"], state["best_epoch"]
        log(f"resuming {run_dir} after epoch {start} of {config.epochs}")
    lines = _read_metrics(run_dir / METRICS_FILE, start)
    history = [_split_profile(line)[0] for line in lines]
    profiles = [_split_profile(line)[1] for line in lines]
    n_params = count_parameters(model)
    ranks = f" x {world.world_size} ranks (DDP, global batch {config.batch_size * world.world_size})" \
        if world.distributed else ""
    log(f"model {config.model}: {n_params:,} parameters; {steps_per_epoch} steps of {config.batch_size} per epoch "
        f"on {device.type}{ranks}")
    if padded:
        log(f"padding: each epoch repeats {padded} of its {sampler.epoch_size():,} windows so that the "
            f"{world.world_size} ranks get equal shards of {per_rank:,} (every rank must take the same number of steps)")
    debug_shards = os.environ.get(distributed.DEBUG_SHARDS_ENV, "") not in ("", "0")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda _device=None: None)
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and config.precision == "bf16"
           else nullcontext())
    done_here = 0
    for epoch in range(start, config.epochs):
        generator = seed_epoch(config.seed, epoch, world.rank)
        draw = sampler.draw(epoch, world.rank, world.world_size, redraw=config.redraw)
        if debug_shards:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / f"shards-epoch{epoch}-rank{world.rank}.json").write_text(json.dumps(draw.to_dict(with_ids=True)))
        dataset.set_epoch(epoch)
        order = np.searchsorted(sampler.windows.ids, draw.ids).tolist()  # the draw's windows, in training order
        loader = dataset.loader(config.batch_size, sampler=order, num_workers=config.workers, generator=generator,
                                worker_init_fn=seed_worker, pin_memory=device.type == "cuda")
        net.train()
        loss_sum, seen, data_wait, step_time, t0 = 0.0, 0, 0.0, 0.0, time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", disable=not progress, leave=False)
        t_ask = time.perf_counter()
        for signal, mask in bar:
            t_got = time.perf_counter()
            data_wait += t_got - t_ask
            signal, mask = signal.to(device, non_blocking=True), mask.to(device, non_blocking=True)
            with amp:
                logits = net(signal)
            loss = loss_fn(logits.float(), mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            loss_value = loss.item()
            sync(device)
            step_time += time.perf_counter() - t_got
            loss_sum += loss_value * signal.shape[0]
            seen += signal.shape[0]
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
            t_ask = time.perf_counter()
        bar.close()
        train_seconds = time.perf_counter() - t0
        if world.distributed:  # global figures: summed windows and losses, the slowest rank's time, mean timings
            loss_sum, seen, data_wait, step_time = distributed.all_reduce(world, device,
                                                                          [loss_sum, seen, data_wait, step_time])
            seen = int(seen)
            data_wait, step_time = data_wait / world.world_size, step_time / world.world_size
            train_seconds = distributed.all_reduce(world, device, [train_seconds], op="max")[0]
        t1 = time.perf_counter()
        if not val_recordings:
            val = None
        elif world.distributed:
            distributed.sync_buffers(world, model)
            val = distributed.validate(model, Path(config.cache), val_recordings, window, world,
                                       post=config.postprocess(), batch_size=config.val_batch_size, device=device,
                                       cover=config.cover(), transform=transform, precision=config.precision,
                                       store=config.store)
        else:
            val = validate(model, Path(config.cache), val_recordings, window, post=config.postprocess(),
                           batch_size=config.val_batch_size, device=device, cover=config.cover(),
                           transform=transform, precision=config.precision, store=config.store)
        train_loss = loss_sum / max(seen, 1)
        score = f1_key(val) if val is not None else -train_loss
        is_best = score > best_score
        if is_best:
            best_score, best_epoch = score, epoch + 1
        record = {
            "epoch": epoch + 1, "train_loss": train_loss, "lr": scheduler.get_last_lr()[0], "windows": seen,
            "windows_per_s": seen / train_seconds if train_seconds > 0 else None, "train_seconds": train_seconds,
            "val_seconds": time.perf_counter() - t1, "drawn": _drawn(sampler, draw, world),
            "val_split": config.val_split, "val": val, "best": is_best, "world_size": world.world_size,
        }
        if world.distributed:
            record["padded_windows"] = padded  # repeated within the epoch by the shard padding (0: none)
        if selection_note is not None and done_here == 0:
            record["selection_changed"] = selection_note
        profile = {"data_wait_s": data_wait, "step_s": step_time}
        history.append(record)
        profiles.append(profile)
        if world.is_main:
            _write_metrics(run_dir / METRICS_FILE, history, profiles)
            checkpoint = {
                "format": CHECKPOINT_FORMAT, "config": config.to_dict(), "model_config": model.config.to_dict(),
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "epoch": epoch + 1, "best_score": best_score, "best_epoch": best_epoch, "rng": rng_state(),
                "window_set": dataclasses.asdict(sampler.window_set), "metrics": _line(record, profile),
                "world_size": world.world_size,
                "selection": fingerprint if fingerprint is not None else selection_fingerprint(sampler),
            }
            if is_best:
                _atomic_save(checkpoint, run_dir / BEST)
            _atomic_save(checkpoint, run_dir / LAST)
        distributed.barrier(world, device)  # the others wait until rank 0 has written the epoch
        log(_epoch_line(record, profile))
        done_here += 1
        if stop_after is not None and done_here >= stop_after and epoch + 1 < config.epochs:
            log(f"stopped after {done_here} epoch(s) as asked; continue with --resume")
            break
    best_f1 = next((r["val"]["event_f1"] for r in history if r["epoch"] == best_epoch and r.get("val")), None)
    return FitResult(run_dir, history[-1]["epoch"] if history else 0, history, best_epoch, best_f1, n_params,
                     profiles, world.world_size)


def _drawn(sampler: EpochSampler, draw, world: distributed.World) -> dict:
    """Counts per class of the whole epoch (every rank's shard together; padding repeats not counted twice)."""
    if not world.distributed:
        return draw.to_dict()["drawn"]
    return sampler.draw(draw.epoch).to_dict()["drawn"]


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _epoch_line(r: dict, profile: dict | None = None) -> str:
    text = f"epoch {r['epoch']}: loss {r['train_loss']:.4f}, {_fmt(r['windows_per_s'], '.1f')} windows/s"
    if r.get("world_size", 1) > 1:
        text += f" over {r['world_size']} ranks"
        if r.get("padded_windows"):
            text += f", {r['padded_windows']} window(s) repeated to pad the shards"
    if profile:
        text += f" (data wait {profile['data_wait_s']:.1f} s, step {profile['step_s']:.1f} s)"
    val = r.get("val")
    if val:
        text += (f"; {r['val_split']} events: sensitivity {_fmt(val['event_sensitivity'])}, precision "
                 f"{_fmt(val['event_precision'])}, F1 {_fmt(val['event_f1'])}, "
                 f"{_fmt(val['event_fp_per_24h'], '.1f')} FP/24h; per-subject (SzCORE) F1 "
                 f"{_fmt(val.get('szcore_event_f1'))} ± {_fmt(val.get('szcore_event_f1_std'))}")
    return text + (" (best)" if r["best"] else "")
