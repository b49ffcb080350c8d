"""Multi-process training with DistributedDataParallel: the process group from torchrun's environment, the few
collectives the loop needs, validation split across ranks, and ``trainer fit --nproc N`` (a torchrun launch).

How a distributed run is laid out:

- torchrun (``python -m torch.distributed.run``) starts N processes and sets ``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init` reads them. Backend ``nccl`` on CUDA (rank r
  uses ``cuda:LOCAL_RANK``), ``gloo`` on the CPU. Nothing here touches NVLink multicast (``NCCL_NVLS_ENABLE``):
  whatever the environment says is what NCCL does.
- Every rank computes the same epoch draw from (seed, epoch) and reads only its own shard (``EpochSampler.draw``
  with its rank), so ranks never exchange window ids and the global epoch is the single-process epoch.
- Validation recordings are divided between ranks (longest first, to the least loaded rank), each rank scores its
  share with the unwrapped model, and the per-recording counts are gathered and summed in recording order: the
  result is the single-process validation of the same weights, to the bit.
- Rank 0 alone writes ``metrics.jsonl``, ``last.pt`` and ``best.pt``; the others wait at a barrier.

A world of one (no torchrun variables, or ``WORLD_SIZE=1``) initialises nothing: single-process runs behave exactly
as before.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from eegcache.errors import StateError
from trainer.metrics import Counts, summarize
from trainer.postprocess import PostProcess
from trainer.predict import RecordingRef, iter_predictions, with_szcore

# Environment variable that makes each rank write the window ids it trained on per epoch (for tests and debugging).
DEBUG_SHARDS_ENV = "TRAINER_DEBUG_SHARDS"
_TIMEOUT = timedelta(minutes=30)


class DistributedError(StateError):
    """The distributed environment cannot run as asked; the message says why."""


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank, world size, local rank, and whether it started the process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's variables; (0, 1, 0) outside torchrun."""
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise DistributedError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers: {exc}") from None
    if world_size < 1 or not 0 <= rank < world_size:
        raise DistributedError(f"RANK {rank} must lie in [0, WORLD_SIZE {world_size})")
    return rank, world_size, local_rank


def init(device: str) -> tuple[World, torch.device]:
    """Join the process group torchrun described (a no-op for a world of one) and pick this rank's device:
    ``cuda:LOCAL_RANK`` with NCCL, or the CPU with gloo."""
    rank, world_size, local_rank = env_world()
    if device not in ("cpu", "cuda"):
        raise DistributedError(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise DistributedError(f"--device cuda: torch {torch.__version__} sees no CUDA device; use --device cpu")
        if world_size > 1 and local_rank >= torch.cuda.device_count():
            raise DistributedError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s) are "
                                   "visible; start at most that many processes per node")
        if world_size == 1:
            return World(), torch.device("cuda")  # exactly as a single-process run always chose it
        torch_device = torch.device("cuda", local_rank)
        torch.cuda.set_device(torch_device)
    else:
        torch_device = torch.device("cpu")
    if world_size == 1:
        return World(), torch_device
    if dist.is_initialized():  # a caller (a test, a notebook) set the group up already
        if dist.get_world_size() != world_size or dist.get_rank() != rank:
            raise DistributedError("the existing process group does not match RANK/WORLD_SIZE")
        return World(rank, world_size, local_rank, owns_group=False), torch_device
    backend = "nccl" if torch_device.type == "cuda" else "gloo"
    kwargs: dict = {"backend": backend, "timeout": _TIMEOUT}
    if backend == "nccl":
        kwargs["device_id"] = torch_device  # binds the rank to its GPU (barriers use it; no guessing at GPU 0)
    try:
        dist.init_process_group(**kwargs)
    except TypeError:  # an older torch without device_id
        kwargs.pop("device_id", None)
        dist.init_process_group(**kwargs)
    return World(rank, world_size, local_rank, owns_group=True), torch_device


def shutdown(world: World) -> None:
    if world.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World, device: torch.device) -> None:
    if not world.distributed:
        return
    if device.type == "cuda":
        dist.barrier(device_ids=[device.index])
    else:
        dist.barrier()


def all_reduce(world: World, device: torch.device, values: list[float], op: str = "sum") -> list[float]:
    """Sum (or max) of a few numbers over ranks, in float64; the numbers themselves for a world of one."""
    if not world.distributed:
        return [float(v) for v in values]
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return [float(v) for v in tensor.tolist()]


def sync_buffers(world: World, model: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank. DDP broadcasts them at the start of each
    forward, but the last training step updates each rank's copy from its own batch; validation on a rank must use
    the weights rank 0 checkpoints."""
    if not world.distributed:
        return
    persistent = set(model.state_dict())
    for name, buffer in model.named_buffers():
        if name in persistent:
            dist.broadcast(buffer, src=0)


# ----------------------------------------------------------------------------------------------------------------
# Validation across ranks


def assign(recordings: list[RecordingRef], world_size: int) -> list[list[int]]:
    """Recording positions per rank: longest first, each to the rank with the fewest samples so far (ties to the
    lower rank). Deterministic, so every rank computes the same assignment without talking."""
    loads = [0] * world_size
    shares: list[list[int]] = [[] for _ in range(world_size)]
    for i in sorted(range(len(recordings)), key=lambda i: (-recordings[i].n_samples, i)):
        r = min(range(world_size), key=lambda r: (loads[r], r))
        shares[r].append(i)
        loads[r] += recordings[i].n_samples
    return shares


def validate(model: torch.nn.Module, cache: Path, recordings: list[RecordingRef], window: int, world: World, *,
             post: PostProcess | None = None, batch_size: int = 16, device: torch.device | str = "cpu",
             cover=None, transform=None, precision: str = "bf16", store: str | None = None) -> dict:
    """:func:`trainer.predict.validate` with the recordings divided between ranks; every rank gets the result
    (``recordings`` must not hold recordings that ``cover`` skips).

    Counts are summed in recording order, as the single-process function does, so the figures are identical.
    Call :func:`sync_buffers` first after training steps, so that every rank scores rank 0's weights."""
    share = assign(recordings, world.world_size)[world.rank]
    mine = [recordings[i] for i in sorted(share)]
    local = {result.recording.id: (result.counts, result.szcore) for result in
             iter_predictions(model, cache, mine, window, post=post, batch_size=batch_size, device=device,
                              cover=cover, transform=transform, precision=precision, store=store)}
    if world.distributed:
        gathered: list[dict | None] = [None] * world.world_size
        dist.all_gather_object(gathered, local)
        counts: dict = {}
        for part in gathered:
            counts.update(part or {})
    else:
        counts = local
    total = Counts()
    for rec in recordings:
        total = total + counts[rec.id][0]
    return with_szcore(summarize(total), [(rec.subject_key, counts[rec.id][1]) for rec in recordings])


# ----------------------------------------------------------------------------------------------------------------
# ``trainer fit --nproc N``


def launch_command(nproc: int, fit_args: list[str]) -> list[str]:
    """The torchrun command that runs ``trainer fit`` with ``fit_args`` on ``nproc`` processes of this machine
    (``--standalone``: a local rendezvous on a free port, nothing to configure)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "trainer", "fit", *fit_args]


def launch(nproc: int, fit_args: list[str]) -> int:
    """Run torchrun as a child and return its exit status (non-zero if any rank failed)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.run(launch_command(nproc, fit_args), env=env).returncode
