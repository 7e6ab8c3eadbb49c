"""Data-parallel training across processes (several GPUs, or CPU processes) launched by Accelerate.

    accelerate launch --num_processes 2 -m ptuning_lab.cli train --task capital --out runs/capital

Every process holds the whole frozen model and the same prompt encoder. One step of a global batch
of B examples: rank r takes a contiguous shard of it (the shards concatenate back to the batch),
computes ``loss(shard) * |shard| / B`` and its gradients, then the gradients are SUMMED over the
ranks. The sum equals the gradient of the mean loss over the global batch, so every rank takes the
same optimizer step as a single process would on the whole batch, and the prompts stay identical
(a plain all-reduce, not DDP's wrapper: the encoder's forward takes no input, nothing to wrap).

Evaluation shards the examples the same way and gathers each rank's metrics; every rank combines
them identically, so early stopping and the best state agree everywhere. Only the main process
writes files. Without a launcher (plain ``python``), :func:`context` is a single process: the
trainer runs exactly as it always did, and Accelerate is not even started.

Under an FSDP launch (``accelerate launch --config_file configs/accelerate_fsdp.yaml``) the frozen
model is sharded across the ranks instead of copied (:mod:`ptuning_lab.sharding`); the prompt
encoder, its summed gradients and everything above stay as they are.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
import torch.distributed

from . import sharding
from .metrics import label_metrics

# metrics that are fractions of a count: combined from integer counts, so the gathered value is the
# exact same float a single process computes (a 1-ulp difference could flip a best-state tie)
COUNT_METRICS = ("p_at_1", "candidate_accuracy")


@dataclass(frozen=True)
class LaunchInfo:
    """Where this process sits in a launch, read from the launcher's environment variables."""

    world_size: int = 1      # number of processes (WORLD_SIZE)
    rank: int = 0            # this process's index, 0 .. world_size-1 (RANK)
    local_rank: int = 0      # index on this machine: which GPU to use (LOCAL_RANK)


def launch_info(env: Mapping[str, str] | None = None) -> LaunchInfo:
    """Read WORLD_SIZE / RANK / LOCAL_RANK (set by ``accelerate launch`` and ``torchrun``).

    Missing variables mean a single process. Values that cannot describe a launch raise a clear error.
    """
    env = os.environ if env is None else env
    values = {}
    for name, default in (("WORLD_SIZE", 1), ("RANK", 0), ("LOCAL_RANK", 0)):
        raw = env.get(name, "")
        try:
            values[name] = int(raw) if raw.strip() else default
        except ValueError:
            raise ValueError(f"the environment variable {name}={raw!r} is not an integer; start the run with "
                             "`accelerate launch` (which sets it) or unset it for a single process.") from None
    world, rank, local = values["WORLD_SIZE"], values["RANK"], values["LOCAL_RANK"]
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"WORLD_SIZE={world}, RANK={rank}, LOCAL_RANK={local} do not describe a launch (need "
                         "WORLD_SIZE >= 1, 0 <= RANK < WORLD_SIZE, LOCAL_RANK >= 0); start the run with "
                         "`accelerate launch` or unset these variables for a single process.")
    return LaunchInfo(world, rank, local)


def launched(env: Mapping[str, str] | None = None) -> bool:
    """True when this process is one of several started by a launcher (WORLD_SIZE > 1)."""
    return launch_info(env).world_size > 1


# ---------------------------------------------------------------- pure helpers (no process group)
def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s contiguous shard of ``n`` items.

    The first ``n % world_size`` ranks take one item more; shards in rank order concatenate to the
    whole; a rank gets an empty shard when ``n < world_size``.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size} processes (need 0 <= rank < world_size).")
    size, extra = divmod(n, world_size)
    start = rank * size + min(rank, extra)
    return start, start + size + (1 if rank < extra else 0)


def shard(items: Sequence, rank: int, world_size: int) -> list:
    """Rank ``rank``'s shard of ``items`` (deterministic; see :func:`shard_bounds`)."""
    start, stop = shard_bounds(len(items), rank, world_size)
    return list(items[start:stop])


def shard_loss(loss_fn: Callable[[list], torch.Tensor], encoder: torch.nn.Module, examples: Sequence,
               rank: int, world_size: int, pad_empty: bool = False) -> torch.Tensor:
    """This rank's share (0-dim) of the mean loss over the global batch ``examples``.

    ``loss_fn(shard)`` is the mean loss of a shard (plus any term that does not depend on the
    examples, e.g. waywardness); weighting it by ``|shard| / B`` makes the sum over ranks equal
    ``loss_fn(examples)`` and, after backward, the sum of the ranks' gradients equal its gradient.
    A rank with an empty shard (more ranks than examples) returns a zero that needs no backward, but
    still runs the encoder once, so every rank uses the random number generator (dropout) the same
    way and the prompts stay identical. With ``pad_empty`` (a sharded frozen model, whose forward
    is a collective) an empty shard runs the batch's first example with loss weight 0 instead: the
    same forward and backward as the other ranks, adding nothing to the sum.
    """
    if not examples:
        raise ValueError("the global batch is empty; there is nothing to train on.")
    part = shard(examples, rank, world_size)
    if not part and pad_empty:
        return loss_fn(list(examples[:1])) * 0.0
    if not part:
        encoder()
        return torch.zeros((), dtype=torch.float64, device=next(encoder.parameters()).device)
    return loss_fn(part) * (len(part) / len(examples))


def combine_metrics(per_rank: Sequence[dict]) -> dict:
    """Merge per-shard evaluation dicts (``{"n", "p_at_1", "loss", ...}``) into the whole set's.

    Means are re-weighted by each shard's ``n``; count fractions (:data:`COUNT_METRICS`) are summed
    as integer counts. Shards with ``n == 0`` (more ranks than examples) count for nothing. When the
    shards carry their per-example labels (``"predictions"``, from ``evaluate(keep_predictions=True)``),
    the label metrics (accuracy, macro-F1, F1a, EM: not means over shards) are recomputed on the pooled
    predictions, and the predictions are dropped from the result.
    """
    filled = [m for m in per_rank if m.get("n", 0) > 0]
    if not filled:
        raise ValueError("no rank evaluated any example: the split is empty. Use a larger task.")
    n = sum(m["n"] for m in filled)
    out = {k: v for k, v in filled[0].items() if k != "predictions"}
    out["n"] = n
    for key, value in out.items():
        if key == "n" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if key in COUNT_METRICS:
            out[key] = sum(round(m[key] * m["n"]) for m in filled) / n
        else:
            out[key] = sum(m[key] * m["n"] for m in filled) / n
    if all("predictions" in m for m in filled):
        pooled = {k: [x for m in filled for x in m["predictions"][k]] for k in ("gold", "pred", "groups")}
        first = filled[0]["predictions"]
        out.update(label_metrics(first["metrics"], pooled["gold"], pooled["pred"], first["labels"], pooled["groups"]))
    return out


# ---------------------------------------------------------------- the process context
class Distributed:
    """This process's place in the launch, and the collectives the trainer needs.

    With ``accelerator=None`` it is a single process: sharding returns the whole batch, evaluation
    runs unchanged, nothing is communicated.
    """

    def __init__(self, accelerator=None):
        self.accelerator = accelerator

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes if self.accelerator else 1

    @property
    def rank(self) -> int:
        return self.accelerator.process_index if self.accelerator else 0

    @property
    def local_rank(self) -> int:
        return self.accelerator.local_process_index if self.accelerator else 0

    @property
    def is_main_process(self) -> bool:
        """True on the process that writes files and prints (rank 0; always True without a launcher)."""
        return self.rank == 0

    @property
    def device(self) -> torch.device | None:
        """The device Accelerate gave this process (``cuda:LOCAL_RANK`` or cpu); None without a launcher."""
        return self.accelerator.device if self.accelerator else None

    def __repr__(self) -> str:
        return f"Distributed(rank={self.rank}, world_size={self.world_size}, device={self.device})"

    @property
    def sharded(self) -> bool:
        """True when the launch shards the frozen model (an FSDP config) instead of copying it."""
        return bool(self.accelerator) and sharding.sharding_config() is not None

    def prepare_frozen_model(self, lm) -> None:
        """Shard ``lm``'s frozen model across the ranks when the launch asks for FSDP; nothing otherwise.

        Every rank calls it (the trainer does, for its model); calling it again changes nothing.
        """
        config = sharding.sharding_config() if self.accelerator else None
        if config is None or sharding.is_sharded(lm.model):
            return
        sharding.shard_frozen_model(lm.model, config, self.device)
        held, total = sharding.block_weights(lm.model)
        print(f"process {self.rank}: frozen model sharded over {self.world_size} processes (FSDP2); it holds "
              f"{held:,} of the {total:,} block weights", file=sys.stderr, flush=True)

    def shard(self, items: Sequence) -> list:
        """This rank's contiguous shard of ``items``; all of them in a single process."""
        return shard(items, self.rank, self.world_size)

    def wait_for_everyone(self) -> None:
        """Barrier across the ranks (nothing in a single process)."""
        if not self.accelerator:
            return
        sharding.join()
        if self.device.type == "cpu":
            # Accelerate's barrier passes device_ids=[LOCAL_RANK], which torch maps to the host's GPU:
            # CPU processes on a one-GPU machine then fail on rank 1 with "invalid device ordinal"
            # (seen with accelerate 1.15 / torch 2.11). The plain barrier of a gloo group stays on the CPU.
            torch.distributed.barrier()
        else:
            self.accelerator.wait_for_everyone()

    def gather_object(self, obj) -> list:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank (picklable objects)."""
        if not self.accelerator:
            return [obj]
        from accelerate.utils import gather_object

        sharding.join()
        return gather_object([obj])

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Copy rank 0's parameters and buffers into ``module`` on every rank (what DDP does at start).

        Equal starting weights plus equal summed gradients keep the prompt identical on every rank,
        even for an encoder whose initialisation was not seeded.
        """
        if not self.accelerator:
            return
        from accelerate.utils import broadcast

        sharding.join()
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                t.copy_(broadcast(t.detach().clone(), from_process=0))

    def all_reduce_gradients(self, params, *extra: torch.Tensor) -> list[torch.Tensor]:
        """Sum each parameter's ``.grad`` over the ranks, in place; return ``extra`` tensors summed too.

        A missing gradient counts as zeros (and is filled in), so every rank sends the same layout.
        One all-reduce per dtype: gradients and extras travel in a single flat buffer.
        """
        params = [p for p in params if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if not self.accelerator:
            return list(extra)
        sharding.join()           # every rank's forwards (and backward) of a sharded model are done
        items = [p.grad for p in params] + [e.detach() for e in extra]
        groups: dict[torch.dtype, list[int]] = {}
        for i, t in enumerate(items):
            groups.setdefault(t.dtype, []).append(i)
        reduced: list[torch.Tensor | None] = [None] * len(items)
        for idx in groups.values():
            flat = self.accelerator.reduce(torch.cat([items[i].reshape(-1) for i in idx]), reduction="sum")
            for i, piece in zip(idx, flat.split([items[i].numel() for i in idx])):
                reduced[i] = piece.view_as(items[i])
        for p, g in zip(params, reduced):
            p.grad.copy_(g)
        return reduced[len(params):]

    def backward_shard(self, loss_fn: Callable[[list], torch.Tensor], encoder: torch.nn.Module,
                       examples: Sequence) -> torch.Tensor:
        """Backward this rank's share of the global batch's mean loss; sum gradients over the ranks.

        Returns the global batch's loss (0-dim, detached), the same on every rank. Raises
        ``FloatingPointError`` on every rank together (gradients cleared) when it is not finite, so
        no rank is left waiting in a collective.
        """
        local = shard_loss(loss_fn, encoder, examples, self.rank, self.world_size, pad_empty=sharding.active())
        if local.requires_grad:
            local.backward()
        # float64 on every rank: the all-reduce buffers must have the same layout everywhere
        (total,) = self.all_reduce_gradients(encoder.parameters(), local.detach().double())
        if not torch.isfinite(total):
            encoder.zero_grad(set_to_none=True)
            raise FloatingPointError(f"the training loss became {total.item()}")
        return total

    def evaluate(self, evaluate_fn: Callable[[list], dict], examples: Sequence) -> dict:
        """``evaluate_fn(examples)``, computed shard by shard across the ranks and gathered.

        Single process: exactly ``evaluate_fn(examples)``. Several: each rank scores its shard
        (uneven shards and empty ones are fine) and every rank gets the same combined dict.
        """
        if not self.accelerator:
            return evaluate_fn(examples)
        part = self.shard(examples)
        mine = evaluate_fn(part) if part else {"n": 0}
        return combine_metrics(self.gather_object(mine))


_CONTEXT: Distributed | None = None


def context(cpu: bool | None = None) -> Distributed:
    """The process-wide :class:`Distributed`, set up on the first call.

    Without a launcher (WORLD_SIZE unset or 1) it is a single process and Accelerate is not started.
    Under ``accelerate launch`` / ``torchrun`` it creates the ``Accelerator``, which joins the
    process group (NCCL on GPUs, gloo on CPUs). ``cpu``: True to train on CPU processes even where
    GPUs exist; None picks CPU only when torch sees no GPU (or ``accelerate launch --cpu`` was used).
    """
    global _CONTEXT
    if _CONTEXT is None:
        if not launched():
            _CONTEXT = Distributed()
        else:
            from accelerate import Accelerator

            use_cpu = bool(cpu) or not torch.cuda.is_available()
            _CONTEXT = Distributed(Accelerator(cpu=use_cpu))
    return _CONTEXT


def is_main_process() -> bool:
    """True on the process that writes files (always, without a launcher)."""
    return context().is_main_process


def wait_for_everyone() -> None:
    """Barrier across the launch's processes (nothing without a launcher)."""
    context().wait_for_everyone()


def shutdown(finished: bool) -> None:
    """End a launched process cleanly: wait for the others (when this rank ``finished`` its work) and
    destroy the process group. Left to the interpreter's exit, gloo's threads can abort the process
    ("terminate called without an active exception") after the work is done. Nothing without a launcher."""
    if _CONTEXT is None or not _CONTEXT.accelerator or not torch.distributed.is_initialized():
        return
    if finished:
        _CONTEXT.wait_for_everyone()
    sharding.forget()
    torch.distributed.destroy_process_group()


def device_for(requested=None):
    """The device to load the frozen model on: ``requested`` alone, or this rank's device under a launch.

    Under a launch every rank needs its own GPU (``cuda:LOCAL_RANK``), so ``None``/"auto"/"cuda"
    become Accelerate's device; an explicit "cpu" sets up CPU processes.
    """
    if not launched():
        return requested
    ctx = context(cpu=str(requested) == "cpu")
    return ctx.device
