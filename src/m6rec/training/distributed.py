"""Data-parallel training glue for `torchrun`: process group set-up, batch sharding, a DDP loss path.

Launch a stage with ``torchrun --standalone --nproc_per_node=N -m m6rec.stages.pretrain --params params.yaml``.
torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address; :func:`init_distributed` reads
them (backend ``nccl`` when CUDA is available, one GPU per local rank, else ``gloo`` on the CPU). Without torchrun
(``WORLD_SIZE`` unset or 1) every helper is a no-op and the code runs exactly as a single process.

Scheme: every rank holds the full model and draws the *same* batches (same seed, same sampler); each rank computes
the loss on its contiguous shard of a batch (:func:`shard`) and DDP all-reduces (averages) the gradients. The shard
loss is weighted by ``world * len(shard) / len(batch)`` so that the average of the ranks' gradients is exactly the
gradient of the mean loss over the whole batch, also when the batch does not split evenly. One step is therefore one
single-process step on the whole batch, up to floating-point summation order.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

log = logging.getLogger(__name__)

Batch = Sequence[Tensor]


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: its rank among `world_size` processes and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: not distributed
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as err:
        raise ValueError(f"${name} must be an integer, got {value!r}") from err


def init_distributed() -> DistEnv:
    """Join the process group described by torchrun's environment; a no-op when ``WORLD_SIZE`` is unset or 1.

    Backend ``nccl`` (device ``cuda:LOCAL_RANK``) when CUDA is available, else ``gloo`` on the CPU.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return DistEnv()
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world_size:
        raise ValueError(f"$RANK={rank} is outside [0, $WORLD_SIZE={world_size})")
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible): use "
                               f"--nproc_per_node <= the number of GPUs")
        backend, device = "nccl", torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        backend, device = "gloo", torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    log.info("rank %d/%d (local %d) joined the process group (%s on %s)", rank, world_size, local_rank, backend,
             device)
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend, device=device)


def world() -> int:
    """Number of processes in the group (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on the process that writes outputs and talks to MLflow (rank 0, or the only process)."""
    return rank() == 0


def cleanup() -> None:
    """Leave the process group (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(batch: Batch, rank: int, world: int) -> tuple[Tensor, ...]:
    """This rank's contiguous shard of every tensor of `batch` (rows split as evenly as possible: sizes differ by at
    most one, the first ranks take the extra rows). Shards of all ranks concatenate back to the batch."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need 0 <= rank < world, got rank={rank}, world={world}")
    sizes = {len(t) for t in batch}
    if len(sizes) > 1:
        raise ValueError(f"batch tensors differ in length: {sorted(sizes)}")
    return tuple(torch.tensor_split(t, world)[rank] for t in batch)


def broadcast_float(value: float | None, src: int = 0) -> float:
    """`value` of rank `src` on every rank (the value itself when not distributed)."""
    if world() == 1:
        return float(value)  # type: ignore[arg-type]
    obj = [value]
    dist.broadcast_object_list(obj, src=src)
    return float(obj[0])


class _LossForward(nn.Module):
    """``forward(batch) = model.calculate_loss(batch)``: DDP only all-reduces gradients of a backward that follows its
    own ``forward`` (its reducer arms the gradient hooks there), so the loss must be computed through it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> Tensor:
        return self.model.calculate_loss(batch)


def ddp_loss(model: nn.Module, env: DistEnv) -> Callable[[Batch], Tensor]:
    """A loss function for :func:`m6rec.training.loop.fit`: the model's ``calculate_loss`` on this rank's shard,
    through DistributedDataParallel, weighted so that gradients average to the whole batch's gradient.

    The returned loss has this rank's gradient but the value of the whole batch's loss (all-reduced), so that the
    logged training curve is the single-process one. `model` must already be on `env.device`.
    """
    if not env.distributed:
        raise ValueError("ddp_loss needs a distributed environment (run under torchrun with WORLD_SIZE > 1)")
    device_ids = [env.device.index] if env.device.type == "cuda" else None
    # Buffers (text vectors, layer weights) are constants identical on every rank: no per-step broadcast.
    wrapped = nn.parallel.DistributedDataParallel(_LossForward(model), device_ids=device_ids, broadcast_buffers=False)

    def loss_fn(batch: Batch) -> Tensor:
        total = len(batch[0])
        part = shard(batch, env.rank, env.world_size)
        weight = env.world_size * len(part[0]) / total
        if len(part[0]) == 0:
            # A batch smaller than the world (an epoch's last one): this rank still joins the all-reduce, with a
            # zero-weighted row so that its gradients are zero and finite.
            part = tuple(t[:1] for t in batch)
        local = wrapped(tuple(t.to(env.device, non_blocking=True) for t in part)) * weight
        value = local.detach().clone()
        dist.all_reduce(value)
        return local + (value / env.world_size - local.detach())

    return loss_fn
