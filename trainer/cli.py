"""The ``trainer`` command line: argument parsing and printing only; the work is in the library modules."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
from click.core import ParameterSource

from eegcache.errors import EegcacheError
from trainer.sampling import EpochSampler, Ratios, Selection, parse_params

# Every deliberate error is an EegcacheError (SamplingError among them); ValueError/KeyError from bad flags.
_ERRORS: tuple[type[Exception], ...] = (EegcacheError, ValueError, KeyError)


def _split(value: str | None) -> str | None:
    return None if value is None or value.lower() in ("all", "none", "") else value


store_option = click.option(
    "--store", envvar="EEGCACHE_STORE", metavar="URL",
    help="Where the objects live when not in the cache folder (e.g. s3://bucket/prefix). Env: EEGCACHE_STORE.")


def selection_options(func):
    """The flags that choose windows, shared by ``fit`` and ``sample`` so both draw the same epochs."""
    options = [
        click.option("--cache", required=True, type=click.Path(file_okay=False, path_type=Path), envvar="EEGCACHE_CACHE",
                     help="Cache folder (index.sqlite + objects/). Env: EEGCACHE_CACHE."),
        click.option("--db", "db", envvar="EEGCACHE_DB", metavar="URL",
                     help="Index URL when it is not CACHE/index.sqlite (e.g. postgresql://host/db). Env: EEGCACHE_DB."),
        click.option("--pipeline", help="The cache's pipeline to read (default: the only one)."),
        click.option("--split", default="train", show_default=True, help="Split to train on ('all' for every split)."),
        click.option("--window", "window_s", type=float, default=60.0, show_default=True, help="Window length (s)."),
        click.option("--stride", "stride_s", type=float, default=60.0, show_default=True, help="Window stride (s)."),
        click.option("--where", help="SQL condition over window_labels columns (subject, montage, session...), "
                                     "run read-only; use :name placeholders with --param."),
        click.option("--param", "params", multiple=True, metavar="NAME=VALUE", help="Bound value for :NAME in --where."),
        click.option("--recipe", metavar="NAME|FILE",
                     help="A recipe (shipped: default, seizure-transformer; or a recipe file): its pipeline, window "
                          "set, ratios, redraw policy and training settings. Flags override its fields; the run "
                          "records the recipe and the overridden fields."),
        click.option("--ratios", default=Ratios().text(), show_default=True,
                     help="Windows per class relative to the partial-seizure count."),
        click.option("--redraw", type=click.Choice(["epoch", "once"]), default="epoch", show_default=True,
                     help="epoch: a new balanced draw every epoch; once: epoch 0's windows every epoch, reshuffled."),
        click.option("--allow-incomplete", is_flag=True,
                     help="Train although recordings of the split failed or are not windowed yet."),
        click.option("--seed", type=click.IntRange(0), default=0, show_default=True),
        click.option("--max-windows-per-epoch", type=click.IntRange(1), help="Cap on windows per epoch (quick runs)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _selection(pipeline, split, window_s, stride_s, where, params, allow_incomplete) -> Selection:
    return Selection(window_s, stride_s, _split(split), where, parse_params(params), allow_incomplete, pipeline)


def _given(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def apply_recipe(ctx: click.Context, recipe: str | None, values: dict, fields: dict[str, str],
                 only: set[str] | None = None) -> tuple[dict, list[str], object]:
    """``values`` (TrainConfig field -> value from the flags) with the recipe's fields put in where the flag was not
    given. Returns (values, the recipe fields that a given flag overrode with another value, the recipe). Recipe
    fields without a flag here go in as they are (only those in ``only`` when given)."""
    from eegcache.recipes import load_recipe

    if not recipe:
        return values, [], None
    chosen = load_recipe(recipe)
    settings = chosen.train_settings()
    if only is None:
        from trainer.fit import TrainConfig

        known = set(TrainConfig.__dataclass_fields__) - {"cache", "out", "db", "recipe", "recipe_file", "overrides"}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"recipe {chosen.source}: unknown training setting(s): {', '.join(unknown)}")
    by_field = {f: name for name, f in fields.items()}
    out, overridden = dict(values), []
    for key, value in settings.items():
        if only is not None and key not in only:
            continue
        if key in ("split", "val_split"):
            value = _split(value)
        if key == "ratios":
            value = Ratios.parse(value).text()
        name = by_field.get(key)
        if name is not None and _given(ctx, name):
            if out[key] != value:
                overridden.append(key)
            continue
        out[key] = value
    return out, sorted(overridden), chosen


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="eegcache")
def main() -> None:
    """Train and evaluate seizure detectors on an eegcache cache; epochs are drawn by SQL over its index."""


@main.command()
@selection_options
@click.option("--epoch", type=click.IntRange(0), default=0, show_default=True,
              help="Epoch to draw, 0-based (metrics.jsonl epoch 1 is --epoch 0).")
@click.option("--rank", type=click.IntRange(0), default=0, show_default=True)
@click.option("--world-size", type=click.IntRange(1), default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--ids", "with_ids", is_flag=True, help="Include the window ids, in training order.")
@click.pass_context
def sample(ctx, cache, db, pipeline, split, window_s, stride_s, where, params, recipe, ratios, redraw, allow_incomplete,
           seed, max_windows_per_epoch, epoch, rank, world_size, as_json, with_ids):
    """Print what an epoch draws (counts per class, optionally the ids) without training."""
    try:
        values = dict(pipeline=pipeline, split=_split(split), window_s=window_s, stride_s=stride_s, ratios=ratios,
                      redraw=redraw, seed=seed)
        values, _, _ = apply_recipe(ctx, recipe, values, {k: k for k in values}, only=set(values))
        sampler = EpochSampler(cache, Selection(values["window_s"], values["stride_s"], values["split"], where,
                                                parse_params(params), allow_incomplete, values["pipeline"]),
                               Ratios.parse(values["ratios"]), values["seed"], max_windows=max_windows_per_epoch, db=db)
        if rank >= world_size:
            raise ValueError(f"--rank {rank} must be smaller than --world-size {world_size}")
        draw = sampler.draw(epoch, rank, world_size, redraw=values["redraw"])
    except _ERRORS as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps({**sampler.summary(), "redraw": values["redraw"], "recipe": recipe,
                               "draw": draw.to_dict(with_ids=with_ids)}, indent=2))
        return
    for line in sampler.describe():
        click.echo(line)
    drawn = ", ".join(f"{k} {v:,}" for k, v in draw.to_dict()["drawn"].items())
    click.echo(f"epoch {epoch} (seed {seed}), rank {rank}/{world_size}: {draw.ids.size:,} windows: {drawn}")
    if with_ids:
        click.echo(" ".join(str(i) for i in draw.ids.tolist()))


# CLI option name → TrainConfig field, for --resume (only options given on the command line override the run's).
_FIT_FIELDS = {
    "cache": "cache", "db": "db", "pipeline": "pipeline",
    "split": "split", "window_s": "window_s", "stride_s": "stride_s", "where": "where",
    "params": "params", "ratios": "ratios", "allow_incomplete": "allow_incomplete", "seed": "seed",
    "max_windows_per_epoch": "max_windows_per_epoch", "epochs": "epochs", "batch_size": "batch_size",
    "workers": "workers", "store": "store", "reader": "reader",
    "model": "model", "device": "device", "lr": "lr", "weight_decay": "weight_decay",
    "grad_clip": "grad_clip", "val_split": "val_split", "threshold": "threshold", "augment": "augment",
    "redraw": "redraw", "optimizer": "optimizer", "schedule": "schedule", "precision": "precision",
    "init_from": "init_from", "tail": "eval_tail", "strict_threshold": "strict_threshold", "skip_short": "skip_short",
}


@main.command()
@selection_options
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run folder: metrics.jsonl, last.pt, best.pt.")
@click.option("--epochs", type=click.IntRange(1), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True)
@click.option("--workers", type=click.IntRange(0), default=0, show_default=True, help="DataLoader worker processes.")
@store_option
@click.option("--reader", type=click.Choice(["auto", "direct", "tensorstore", "zarrs", "zarr"]), default="auto", show_default=True,
              envvar="EEGCACHE_READER", help="The library windows are read with (the same bytes whichever): auto is "
                                             "the fastest installed. Env: EEGCACHE_READER.")
@click.option("--model", type=click.Choice(["tiny", "base", "seizure-transformer"]), default="tiny", show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--optimizer", type=click.Choice(["adamw", "radam"]), default="adamw", show_default=True)
@click.option("--schedule", type=click.Choice(["cosine", "constant"]), default="cosine", show_default=True,
              help="cosine: linear warm-up then cosine decay per step; constant: the learning rate never changes.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Peak learning rate.")
@click.option("--weight-decay", type=float, default=0.01, show_default=True)
@click.option("--grad-clip", type=float, default=1.0, show_default=True, help="Max gradient norm (0: off).")
@click.option("--precision", type=click.Choice(["bf16", "fp32"]), default="bf16", show_default=True,
              help="On CUDA: bf16 autocast, or fp32 throughout (CPU is always fp32).")
@click.option("--init-from", "init_from", metavar="CHECKPOINT",
              help="Initial weights: a trainer checkpoint, or the authors' released SeizureTransformer state dict "
                   "(reference parameter names, mapped; see trainer/reference.py).")
@click.option("--val-split", default="dev", show_default=True, help="Validation split ('none' to skip).")
@click.option("--threshold", type=float, default=0.8, show_default=True, help="Probability threshold for events.")
@click.option("--strict-threshold/--no-strict-threshold", default=False, show_default=True,
              help="Events where probability > threshold (the reference) instead of >=.")
@click.option("--tail", type=click.Choice(["end-aligned", "zero-pad"]), default="end-aligned", show_default=True,
              help="Validation windows: the tail by one end-aligned window, or zero-padded (the reference).")
@click.option("--skip-short/--no-skip-short", default=False, show_default=True,
              help="Skip validation recordings shorter than one window (the reference) instead of zero-padding them.")
@click.option("--augment", is_flag=True, help="Random gain and channel dropout (seeded per window).")
@click.option("--resume", is_flag=True, help="Continue the run in --out to the same result as an uninterrupted run.")
@click.option("--accept-changed-selection", is_flag=True,
              help="With --resume: continue although the cache now selects other windows than the checkpoint "
                   "recorded (refused otherwise, saying what changed); metrics.jsonl records the change.")
@click.option("--stop-after", type=click.IntRange(1),
              help="End this call after N epochs (a time-boxed job); continue later with --resume.")
@click.option("--nproc", type=click.IntRange(1),
              help="Train with DistributedDataParallel on N processes of this machine (one per GPU with --device "
                   "cuda), launched through torchrun; --batch-size is per process. Same as "
                   "torchrun --nproc_per_node=N -m trainer fit ...")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def fit(ctx, cache, db, pipeline, split, window_s, stride_s, where, params, recipe, ratios, redraw, allow_incomplete, seed,
        max_windows_per_epoch, out, epochs, batch_size, workers, store, reader, model, device, optimizer, schedule, lr,
        weight_decay, grad_clip, precision, init_from, val_split, threshold, strict_threshold, tail, skip_short, augment,
        resume, accept_changed_selection, stop_after, nproc, quiet):
    """Train a SeizureTransformer-style model on windows drawn from the cache; validate by event F1 each epoch.

    Under torchrun (or with --nproc N) every process trains on its own shard of each epoch's draw; rank 0 writes
    metrics.jsonl, last.pt and best.pt."""
    from trainer import distributed
    from trainer.fit import FitError, TrainConfig, resume_config
    from trainer.fit import fit as run_fit

    try:
        rank, world_size, _ = distributed.env_world()
    except distributed.DistributedError as exc:
        raise click.ClickException(str(exc)) from None
    if nproc is not None and "WORLD_SIZE" in os.environ:
        if nproc != world_size:
            raise click.ClickException(f"--nproc {nproc} under torchrun with WORLD_SIZE {world_size}: drop --nproc "
                                       "(torchrun already started the processes)")
    elif nproc is not None and nproc > 1:
        ctx.exit(distributed.launch(nproc, _given_args(ctx, skip=("nproc",))))

    values = dict(cache=str(cache), db=db, pipeline=pipeline, split=_split(split), window_s=window_s, stride_s=stride_s,
                  where=where,
                  ratios=ratios, allow_incomplete=allow_incomplete, seed=seed,
                  max_windows_per_epoch=max_windows_per_epoch, epochs=epochs, batch_size=batch_size, workers=workers,
                  store=store, reader=reader,
                  model=model, device=device, lr=lr, weight_decay=weight_decay, grad_clip=grad_clip,
                  val_split=_split(val_split), threshold=threshold, augment=augment, redraw=redraw,
                  optimizer=optimizer, schedule=schedule, precision=precision, init_from=init_from,
                  strict_threshold=strict_threshold, eval_tail=tail, skip_short=skip_short)
    try:
        values["params"] = parse_params(params)
        Ratios.parse(ratios)
        if resume:
            given = {_FIT_FIELDS[name]: values[_FIT_FIELDS[name]] for name in _FIT_FIELDS if _given(ctx, name)}
            config = resume_config(out, {**given, "out": str(out)})
        else:
            values, overridden, chosen = apply_recipe(ctx, recipe, values, _FIT_FIELDS)
            if chosen is not None:
                values.update(recipe=chosen.ident, recipe_file=chosen.source, overrides=tuple(overridden))
                click.echo(f"recipe {chosen.ident} ({chosen.source})"
                           + (f"; overridden by flags: {', '.join(overridden)}" if overridden else ""))
            config = TrainConfig(out=str(out), **values)
        result = run_fit(config, resume=resume, stop_after=stop_after, log=click.echo, progress=not quiet,
                         accept_changed_selection=accept_changed_selection)
    except (*_ERRORS, FitError) as exc:
        raise click.ClickException(str(exc) if rank == 0 else f"rank {rank}: {exc}") from None
    if rank != 0:
        return
    best = "n/a" if result.best_f1 is None else f"{result.best_f1:.3f}"
    click.echo(f"done: {result.epochs_done} epochs in {out}; best epoch {result.best_epoch} (event F1 {best})")


def _given_args(ctx: click.Context, skip: tuple[str, ...] = ()) -> list[str]:
    """The options given on the command line (or by environment variable), as arguments again: what a launched
    ``trainer fit`` needs to see the same command, with defaults left to it (so ``--resume`` stays unchanged)."""
    args: list[str] = []
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name in skip:
            continue
        if ctx.get_parameter_source(param.name) not in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            continue
        flag, value = max(param.opts, key=len), ctx.params[param.name]
        if param.is_flag:
            args += [flag] if value else []
        elif param.multiple:
            for item in value:
                args += [flag, str(item)]
        else:
            args += [flag, str(value)]
    return args


def _metric_lines(name: str, m: dict) -> str:
    def f(key, spec=".3f"):
        return "n/a" if m.get(key) is None else format(m[key], spec)

    return (f"{name:<10} events: sensitivity {f('event_sensitivity')}  precision {f('event_precision')}  "
            f"F1 {f('event_f1')}  FP/24h {f('event_fp_per_24h', '.1f')}   samples: sensitivity "
            f"{f('sample_sensitivity')}  precision {f('sample_precision')}  F1 {f('sample_f1')}\n"
            f"{'':<10} SzCORE, mean ± std over {m.get('szcore_subjects', 0)} subjects: sensitivity "
            f"{f('szcore_event_sensitivity')} ± {f('szcore_event_sensitivity_std')}  precision "
            f"{f('szcore_event_precision')} ± {f('szcore_event_precision_std')}  F1 {f('szcore_event_f1')} ± "
            f"{f('szcore_event_f1_std')}  FP/24h {f('szcore_event_fp_per_24h', '.1f')} ± "
            f"{f('szcore_event_fp_per_24h_std', '.1f')}")


@main.command()
@click.option("--cache", required=True, type=click.Path(file_okay=False, path_type=Path), envvar="EEGCACHE_CACHE")
@click.option("--db", "db", envvar="EEGCACHE_DB", metavar="URL", help="Index URL when it is not CACHE/index.sqlite.")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--split", default="eval", show_default=True, help="Split to score ('all' for every split).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Write the predictions (see --format) and metrics.json here.")
@click.option("--format", "fmt", type=click.Choice(["csv_bi", "szcore"]), default="csv_bi", show_default=True,
              help="Predictions as <recording>.csv_bi, or as SzCORE: one sub-.../eeg/..._events.tsv per recording at "
                   "its BIDS relative path (TUSZ trees: sub-<patient>/ses-<NNN>/eeg/..._run-<TTT>_events.tsv).")
@click.option("--plot", "plots", multiple=True, metavar="RECORDING", help="Write RECORDING.png (probability vs truth).")
@click.option("--recipe", metavar="NAME|FILE",
              help="Post-processing and window cover from a recipe's [evaluate] table instead of the run's.")
@click.option("--threshold", type=float, help="Override the run's threshold.")
@click.option("--strict-threshold/--no-strict-threshold", default=None, help="Events where probability > threshold.")
@click.option("--tail", type=click.Choice(["end-aligned", "zero-pad"]), help="Override the run's window cover.")
@click.option("--skip-short/--no-skip-short", default=None, help="Skip recordings shorter than one window.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--baselines", is_flag=True, help="Also score all-zero and all-one constant predictors.")
@store_option
@click.option("--json", "as_json", is_flag=True)
def evaluate(cache, db, checkpoint, split, out, fmt, plots, recipe, threshold, strict_threshold, tail, skip_short,
             device, baselines, store, as_json):
    """Score a checkpoint on a split with the SzCORE event metrics and sample metrics; the report counts the
    split's recordings that were not scored, and why."""
    from eegcache.recipes import load_recipe
    from trainer.evaluate import baselines as constant_baselines
    from trainer.evaluate import checkpoint_pipeline
    from trainer.evaluate import evaluate as run_evaluate
    from trainer.fit import FitError, load_checkpoint
    from trainer.postprocess import Cover, PostProcess

    try:
        stored = load_checkpoint(checkpoint)["config"]
        settings = {"threshold": stored.get("threshold", 0.8), "morph_samples": stored.get("morph_samples", 5),
                    "min_event_s": stored.get("min_event_s", 2.0),
                    "strict_threshold": stored.get("strict_threshold", False),
                    "eval_tail": stored.get("eval_tail", "end-aligned"), "skip_short": stored.get("skip_short", False)}
        if recipe:
            settings.update({k: v for k, v in load_recipe(recipe).evaluate.items() if k in settings})
        for key, value in (("threshold", threshold), ("strict_threshold", strict_threshold), ("eval_tail", tail),
                           ("skip_short", skip_short)):
            if value is not None:
                settings[key] = value
        post = PostProcess(settings["threshold"], settings["morph_samples"], settings["min_event_s"],
                           strict=settings["strict_threshold"])
        cover = Cover(settings["eval_tail"], settings["skip_short"])
        result = run_evaluate(cache, checkpoint, _split(split), out=out, plot=list(plots) or None, post=post,
                              device=device, fmt=fmt, db=db, cover=cover, store=store)
        base = (constant_baselines(cache, _split(split), post, checkpoint_pipeline(checkpoint), db=db, store=store)
                if baselines else {})
    except (*_ERRORS, FitError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps({"split": split, "metrics": result.metrics, "baselines": base or None,
                               "files": [str(p) for p in result.files]}, indent=2))
        return
    m = result.metrics
    click.echo(f"{split}: {m['recordings']} recordings, {m['hours']:.2f} h, {m['event_ref']} seizures")
    unscored = m.get("unscored", {})
    reasons = ", ".join(f"{n} {why}" for why, n in unscored.get("by_reason", {}).items())
    click.echo(f"not scored: {unscored.get('count', 0)} recording(s) of the split" + (f" ({reasons})" if reasons else ""))
    click.echo(_metric_lines("model", m))
    for name, scores in base.items():
        click.echo(_metric_lines(name, scores))
    for path in result.files:
        click.echo(f"wrote {path}")
