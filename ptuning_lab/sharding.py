"""A frozen model sharded across the processes of a launch (FSDP2, ``torch.distributed.fsdp.fully_shard``).

    accelerate launch --config_file configs/accelerate_fsdp.yaml -m ptuning_lab.cli train --task capital --out runs/c

Data parallel training (:mod:`ptuning_lab.distributed`) keeps the whole frozen model in every
process. With an FSDP launch each transformer block is cut into ``world_size`` flat shards, one per
rank; before a block runs, its shards are all-gathered into the full weights, and dropped again
after it (``reshard_after_forward``), so a rank holds ``1/world_size`` of the blocks plus one block
at a time. The embedding matrix, the final norm and the LM head stay whole in every rank (FSDP's
``ignored_params``): the library reads them outside the model's forward (prompt init, the fast
path's logits, ``lm.embedding``). Nothing of the frozen model trains, so nothing is reduce-scattered;
the prompt encoder is replicated and its gradients all-reduced exactly as in data parallel.

**Every rank must run the same forwards.** The all-gathers are collectives: when rank 0 runs a
block, every rank must run it. The trainer's data does not guarantee that (a rank's shard of the
last batch can be empty, ranks hold different numbers of evaluation batches, the fast path's prefix
cache misses on different steps). :class:`Lockstep` makes the ranks agree before each forward of
the model: a rank with nothing to run (or a training forward still ahead of it while another rank
runs one without gradients) runs a one-token dummy forward without gradients instead. Forwards
*with* gradients (one per training step, a dummy example with loss weight 0 on an empty shard) are
run by every rank together. :func:`join` -- called by :class:`ptuning_lab.distributed.Distributed`
before every other collective -- waits, running dummies, until every rank is done.

The launch asks for sharding through the variables ``accelerate launch`` sets from an FSDP config
(``ACCELERATE_USE_FSDP=true``, ``FSDP_VERSION=2``, ...); with ``torchrun``, set them yourself.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.distributed as dist
from torch import nn

_TRUE = ("1", "true", "yes")


@dataclass(frozen=True)
class ShardingConfig:
    """How the frozen model is sharded, read from an FSDP launch (see :func:`sharding_config`)."""

    reshard_after_forward: bool = True      # free each block's full weights after its forward (False: keep them until the backward)
    offload_params: bool = False            # keep the shards in CPU memory, copy them to the GPU for each use
    block_classes: tuple[str, ...] = ()     # class names of the blocks to shard; () = the model's own (_no_split_modules)


def sharding_config(env: Mapping[str, str] | None = None) -> ShardingConfig | None:
    """The sharding an ``accelerate launch`` FSDP config asks for, or None (no FSDP: data parallel).

    Reads ``ACCELERATE_USE_FSDP``, ``FSDP_VERSION``, ``FSDP_RESHARD_AFTER_FORWARD``,
    ``FSDP_OFFLOAD_PARAMS``, ``FSDP_TRANSFORMER_CLS_TO_WRAP`` and refuses settings it cannot honour
    (FSDP1, activation checkpointing, size-based wrapping) rather than ignoring them.
    """
    env = os.environ if env is None else env
    if env.get("ACCELERATE_USE_FSDP", "").strip().lower() not in _TRUE:
        return None
    version = env.get("FSDP_VERSION", "1").strip() or "1"
    if version != "2":
        raise ValueError(f"FSDP_VERSION={version}: ptuning_lab shards the frozen model with FSDP2 only; set "
                         "`fsdp_version: 2` in the accelerate config (configs/accelerate_fsdp.yaml has it).")
    if env.get("FSDP_ACTIVATION_CHECKPOINTING", "").strip().lower() in _TRUE:
        raise ValueError("fsdp_activation_checkpointing is not supported for the frozen model; set it to false.")
    policy = env.get("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP").strip() or "TRANSFORMER_BASED_WRAP"
    if policy != "TRANSFORMER_BASED_WRAP":
        raise ValueError(f"fsdp_auto_wrap_policy={policy}: the frozen model is sharded one transformer block at a "
                         "time; set `fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP`.")
    reshard = env.get("FSDP_RESHARD_AFTER_FORWARD", "true").strip().lower()
    if reshard not in ("true", "false", "1", "0"):
        raise ValueError(f"FSDP_RESHARD_AFTER_FORWARD={reshard!r}: use true or false.")
    classes = tuple(c.strip() for c in env.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").split(",") if c.strip())
    return ShardingConfig(reshard in ("true", "1"), env.get("FSDP_OFFLOAD_PARAMS", "").strip().lower() in _TRUE,
                          classes)


def transformer_blocks(model: nn.Module, classes: tuple[str, ...] = ()) -> list[nn.Module]:
    """The model's repeated blocks (``GPT2Block``, ``LlamaDecoderLayer``, ...), outermost only, in order."""
    names = set(classes or getattr(model, "_no_split_modules", None) or ())
    if not names:
        raise ValueError(f"cannot tell the transformer blocks of {type(model).__name__}: it names none "
                         "(_no_split_modules); set fsdp_transformer_layer_cls_to_wrap in the accelerate config.")
    blocks, inside = [], set()
    for name, module in model.named_modules():
        if type(module).__name__ in names and not any(name.startswith(p + ".") for p in inside):
            blocks.append(module)
            inside.add(name)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no module of class {sorted(names)}; set "
                         "fsdp_transformer_layer_cls_to_wrap to the class of its blocks.")
    return blocks


def is_sharded(model: nn.Module) -> bool:
    """True when :func:`shard_frozen_model` has sharded ``model`` (in this process)."""
    return getattr(model, "_ptuning_lab_sharded", False)


def shard_frozen_model(model: nn.Module, config: ShardingConfig | None = None,
                       device: torch.device | str | None = None) -> nn.Module:
    """Shard a frozen Hugging Face causal LM over the default process group, in place; return it.

    Each transformer block becomes its own FSDP2 unit; the model's body (``model.base_model``) is
    the root unit, holding no shards of its own (embeddings, norms and head are replicated, moved to
    ``device``). Must be called by every rank, with the same model. Idempotent.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    if is_sharded(model):
        return model
    if not dist.is_initialized():
        raise RuntimeError("sharding the frozen model needs the launch's process group; start with "
                           "`accelerate launch` or `torchrun`.")
    if any(p.requires_grad for p in model.parameters()):
        raise ValueError("only a frozen model is sharded here (the prompt encoder is replicated); call "
                         "model.requires_grad_(False) first (FrozenLM does).")
    config = config or ShardingConfig()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    offload = CPUOffloadPolicy() if config.offload_params else OffloadPolicy()
    body = model.base_model
    blocks = transformer_blocks(model, config.block_classes)
    in_blocks = {p for b in blocks for p in b.parameters()}
    in_block_buffers = {id(b) for blk in blocks for b in blk.buffers()}
    with torch.no_grad():       # what FSDP does not manage stays whole, on this rank's device (FSDP moves the blocks)
        for m in model.modules():
            for p in m.parameters(recurse=False):
                if p not in in_blocks:
                    p.data = p.data.to(device)
            for key, b in m.named_buffers(recurse=False):
                if id(b) not in in_block_buffers:
                    m._buffers[key] = b.to(device)
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=config.reshard_after_forward, offload_policy=offload)
    # the body as the root unit: one lazy initialisation and one set of streams for all blocks
    fully_shard(body, mesh=mesh, reshard_after_forward=config.reshard_after_forward, offload_policy=offload,
                ignored_params={p for p in body.parameters() if p not in in_blocks})
    lockstep().add(body)
    model._ptuning_lab_sharded = True
    return model


def block_weights(model: nn.Module) -> tuple[int, int]:
    """``(held, total)``: weights of the sharded blocks this rank stores, and in the whole model."""
    from torch.distributed.tensor import DTensor

    held = total = 0
    for p in model.parameters():
        if isinstance(p, DTensor):
            held += p.to_local().numel()
            total += p.numel()
    return held, total


# ---------------------------------------------------------------- the forward lockstep
NO_GRAD, GRAD, DONE = 1, 2, 3     # what a rank asks to run next; the smallest request runs first
_MODELS = 1 << 20                 # a request is kind * _MODELS + the index of the sharded body it runs


class Lockstep:
    """Makes every rank run the same sequence of forwards of the sharded bodies (see the module docstring).

    One per process (:func:`lockstep`), for every model sharded in it. Before each forward the
    ranks all-reduce (MIN) what they are about to run: ``NO_GRAD`` or ``GRAD``, and which body; in
    :meth:`join`, ``DONE``. A rank whose request is larger than the minimum runs a dummy forward
    without gradients of the body the minimum names, and asks again. The requests travel on a gloo
    group of their own: CPU integers, so a GPU run does not wait for the device to decide.
    """

    def __init__(self):
        self.group = dist.new_group(backend="gloo")
        self.bodies: list[nn.Module] = []        # in the order they were sharded: the same on every rank
        self._inside = False
        self.dummy_forwards = 0

    def add(self, body: nn.Module) -> None:
        index = len(self.bodies)
        self.bodies.append(body)

        def before_forward(module, args, kwargs):
            if not self._inside:                 # the dummy forward itself is not agreed upon again
                grad = torch.is_grad_enabled() and _needs_grad([*args, *kwargs.values()])
                self._agree((GRAD if grad else NO_GRAD) * _MODELS + index)

        # prepend: the agreement comes before FSDP's own pre-forward hook (the all-gathers)
        body.register_forward_pre_hook(before_forward, prepend=True, with_kwargs=True)

    def _agree(self, request: int) -> None:
        while True:
            t = torch.tensor([request], dtype=torch.int64)
            dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.group)
            lowest = int(t)
            if lowest == request:
                return
            kind, index = divmod(lowest, _MODELS)
            if kind == GRAD:
                # a forward with gradients needs this rank's backward too: a dummy cannot stand in for it
                raise RuntimeError("ranks out of step: another rank runs a training forward of the sharded model "
                                   "that this rank does not; every rank must run one per training step "
                                   "(ptuning_lab.distributed.shard_loss pads an empty shard).")
            self._dummy(self.bodies[index])

    @torch.no_grad()
    def _dummy(self, body: nn.Module) -> None:
        weight = body.get_input_embeddings().weight
        self._inside = True
        try:
            body(inputs_embeds=torch.zeros(1, 1, weight.shape[1], dtype=weight.dtype, device=weight.device),
                 use_cache=False)
        finally:
            self._inside = False
        self.dummy_forwards += 1

    def join(self) -> None:
        """Return when every rank has run all its forwards (running dummies for the others meanwhile)."""
        self._agree(DONE * _MODELS)


_LOCKSTEP: Lockstep | None = None


def lockstep() -> Lockstep:
    """This process's :class:`Lockstep` (made by the first call, on every rank)."""
    global _LOCKSTEP
    if _LOCKSTEP is None:
        _LOCKSTEP = Lockstep()
    return _LOCKSTEP


def active() -> bool:
    """True when this process holds a sharded model (its forwards then need :func:`join`)."""
    return _LOCKSTEP is not None and bool(_LOCKSTEP.bodies)


def _needs_grad(values) -> bool:
    """True when an input of a forward requires grad: the prompt in the embeddings, or a K/V prefix
    in the cache. Grad mode alone does not tell (the fast path computes its prefix cache with grad
    mode on and frozen inputs; that forward has no backward)."""
    for v in values:
        if isinstance(v, torch.Tensor):
            if v.requires_grad:
                return True
        elif hasattr(v, "layers"):                                  # a transformers cache (>= 4.56)
            if any(getattr(layer, name, None) is not None and getattr(layer, name).requires_grad
                   for layer in v.layers for name in ("keys", "values")):
                return True
        elif hasattr(v, "key_cache"):                               # older caches
            if any(t.requires_grad for t in [*v.key_cache, *v.value_cache]):
                return True
    return False


def join() -> None:
    """Wait until no rank has a forward of a sharded model left to run (nothing when none is sharded).

    Call it on every rank before any other collective, or a rank blocked there would leave the
    others waiting in a forward.
    """
    if active():
        _LOCKSTEP.join()


def forget() -> None:
    """Drop the lockstep state (the process group is being destroyed)."""
    global _LOCKSTEP
    _LOCKSTEP = None
