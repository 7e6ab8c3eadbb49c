"""Whole training steps replayed as CUDA graphs: one launch per step instead of hundreds.

On a GPU a small model's step is bound by the host: it takes the host longer to launch the step's
few hundred kernels (the encoder and its backward, the frozen model's forward and backward, the
loss, clipping, AdamW) than it takes the device to run them. On a GPU the trainer therefore records
each step as a CUDA graph, once per batch *layout* (:attr:`ptuning_lab.layout.Layout.key`: rows, row
length, cached prefix; the rows are rounded to 16 tokens so a run has few), the second time that
layout comes, and from then on replays it (``FastConfig(cuda_graphs=None)``, the default; ``False``
turns it off, ``True`` also warns where it cannot be done):

- the step's inputs -- the layout's token ids, positions, segments, read and virtual positions,
  and the answers -- go into the graph's own input buffer with one host-to-device copy;
- the learning rate is a device tensor AdamW reads inside the graph, set from the schedule before
  each replay; ``found_inf`` (this loss or an earlier queued one not finite) is computed inside the
  graph, so a non-finite step changes nothing, as on the uncaptured path (:mod:`ptuning_lab.step_queue`);
- recording a graph runs the step twice with ``found_inf`` set first (compiles, allocates AdamW's
  state, leaves parameters, moments and step counts untouched), then captures it.

The result is the uncaptured step's: bit for bit where the recording is emulated on a CPU, and to
float32 rounding on a GPU, where AdamW reads the learning rate as a float32 tensor
(tests/test_step_graphs.py). A step that cannot be replayed runs uncaptured, and :attr:`StepGraphs.reason` says why:
not a CUDA device, a training loss other than the first answer token, an encoder that puts its
tokens in every layer or uses dropout, an unfused optimizer, several processes, or a body compiled
with its own CUDA graphs (``mode="reduce-overhead"``: compile it with ``mode=None`` instead). A batch
whose examples start from their own cached prefixes (``"The capital of [X] is [P]*6"``) is replayed
too: their keys and values are copied into the graph's buffer (rounded to 16 keys per row).
"""
from __future__ import annotations

import contextlib
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import step_queue
from .frozen_lm import _at_least_float32
from .slots import as_inputs

MAX_GRAPHS = 8                # layouts kept recorded at once (the least recently used is dropped)
_GRAPHED_COMPILE_MODES = ("reduce-overhead", "max-autotune")


def unsupported_reason(trainer, device_type: str | None = None) -> str | None:
    """Why ``trainer``'s steps cannot be replayed as graphs (None: they can)."""
    device_type = device_type or trainer.lm.device.type
    fast = trainer.fast
    if device_type != "cuda":
        return f"CUDA graphs need a CUDA device (the model is on {device_type})"
    if not trainer.encoder.uses_template_slots:
        return f"a '{trainer.encoder.method}' encoder runs the model itself"
    if fast is None or not fast.active:
        return "the fast path is off or fell back to the plain path"
    if trainer.config.answer_loss != "first":
        return f"answer_loss='{trainer.config.answer_loss}' (only 'first' is recorded)"
    if _uses_dropout(trainer.encoder):
        return "the encoder uses dropout (its random numbers would differ from the uncaptured step's)"
    if not step_queue.fused(trainer):
        return "the optimizer is not a fused AdamW"
    if trainer.dist.world_size > 1:
        return "several processes (gradients are summed between them)"
    if getattr(trainer.lm, "compile_mode", None) in _GRAPHED_COMPILE_MODES:
        return (f"the model was compiled with mode='{trainer.lm.compile_mode}', which records its own CUDA "
                "graphs; compile it with mode=None for whole-step graphs")
    return None


def for_trainer(trainer) -> "StepGraphs | None":
    """The trainer's recorded steps: on by default where they can be recorded (a GPU), off with
    ``FastConfig(cuda_graphs=False)``; asked for with True where they cannot: a warning says why."""
    fast = trainer.fast
    want = fast.config.cuda_graphs if fast is not None else False
    if want is False:
        return None
    reason = unsupported_reason(trainer)
    if reason and want is None:
        return None
    if reason:
        warnings.warn(f"FastConfig(cuda_graphs=True): the training steps run without CUDA graphs: {reason}.")
    return StepGraphs(trainer)


@dataclass
class _Graph:
    replay: object                 # () -> None: runs the recorded step on the current inputs
    inputs: torch.Tensor           # the layout's flat int64 vector, then the answers' token ids
    prev_bad: torch.Tensor         # 1.0 when a step queued before this one was not finite
    lrs: list                      # per parameter group, the learning rate AdamW reads
    loss: torch.Tensor             # outputs, overwritten by every replay
    bad: torch.Tensor
    prefix_in: tuple | None        # per-example cached prefixes: the keys/values and key segments it reads
    holds: tuple                   # tensors the graph reads or writes that nothing else keeps alive


class StepGraphs:
    """The recorded steps of one trainer; :func:`step_queue.queue` asks :meth:`queue` first.

    ``record``: ``"cuda"`` (CUDA graphs) or ``"rerun"`` (each replay re-runs the recorded step's code
    on the graph's buffers: the same inputs, outputs and state handling without a GPU, for tests).
    """

    def __init__(self, trainer, record: str = "cuda"):
        if record not in ("cuda", "rerun"):
            raise ValueError(f"record must be 'cuda' or 'rerun', got {record!r}")
        self.trainer, self.record = trainer, record
        self.graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self.seen: set[tuple] = set()         # layouts met once: recorded the second time they come
        self.failed: str | None = None        # a recording raised: steps run uncaptured from then on
        self.pool = None
        self.state: tuple = ()                # the parameters' and AdamW state's addresses the graphs use
        self.reason: str | None = None        # why the last step ran uncaptured (None: it was replayed)
        self.stats = {"captures": 0, "replays": 0, "uncaptured": 0}
        if trainer.fast is not None:
            trainer.fast.recorded = True      # rows rounded to 16 tokens: fewer layouts, each replayed more often

    def queue(self, examples, index: int, after: step_queue.Queued | None) -> step_queue.Queued | None:
        """Hand step ``index`` to the device as a replay; None (nothing done) when it cannot be one."""
        t = self.trainer
        self.reason = self.failed or unsupported_reason(t, "cuda" if self.record == "rerun" else None)
        fast = t.forward
        if self.reason is None and not fast._verified:
            self.reason = "the fast path's one-off self-check has not run yet (the first step runs uncaptured)"
        if self.reason is not None:
            self.stats["uncaptured"] += 1
            return None
        seqs = fast._sequences(as_inputs(list(examples)))
        fast._check(seqs, torch.empty(t.encoder.num_virtual_tokens, t.lm.hidden_size, device="meta"))
        lay = fast.layout(seqs, count=False)
        prefix = fast.prefix_kv(lay, seqs)
        if lay.prefix_kind == "rows":         # each example's own cached prefix: copied into the graph's buffer
            key = (lay.key, prefix[0].shape[4])
        else:                                 # one cached prefix (or none): the graph reads it where it is
            key = (lay.key, prefix[0].data_ptr() if prefix is not None else 0)
        if key not in self.graphs and key not in self.seen:
            # a layout met once may never come back (a last partial batch): record it when it does
            if len(self.seen) > 10_000:
                self.seen.clear()
            self.seen.add(key)
            self.reason = "a batch layout is recorded the second time it comes"
            self.stats["uncaptured"] += 1
            return None
        host = np.concatenate([lay.flat, np.fromiter((t.gold[ex.target] for ex in examples), dtype=np.int64)])
        try:
            graph = self._graph(key, lay, prefix, host)
        except Exception as err:       # noqa: BLE001 -- a step that cannot be recorded runs uncaptured
            for p in t.encoder.parameters():
                p.grad = None
            self.clear()
            self.failed = self.reason = f"recording a step failed ({type(err).__name__}: {err})"
            warnings.warn(f"{self.failed}; the training steps run without CUDA graphs from now on.")
            self.stats["uncaptured"] += 1
            return None
        fast.count(seqs, lay)
        rewind = step_queue.before(t)
        dev = t.lm.device
        if graph.prefix_in is not None:
            graph.prefix_in[0].copy_(prefix[0])
            graph.prefix_in[1].copy_(prefix[1])
        graph.inputs.copy_(torch.from_numpy(host).pin_memory() if dev.type == "cuda" else torch.from_numpy(host),
                           non_blocking=True)
        if after is not None:
            graph.prev_bad.copy_(after.bad)
        else:
            graph.prev_bad.zero_()
        for lr, group in zip(graph.lrs, t.optimizer.param_groups):
            lr.fill_(group["lr"])
        graph.replay()
        self.stats["replays"] += 1
        loss, bad = graph.loss.clone(), graph.bad.clone()
        t.scheduler.step()
        return step_queue.Queued(index, loss, bad, t.scheduler.get_last_lr()[0], rewind)

    def clear(self) -> None:
        """Drop every recorded step and its memory (the next step of each layout records it again; the
        trainer clears them when ``fit`` ends, so a finished run holds no GPU memory for them)."""
        if self.graphs and self.record == "cuda":
            # a replay queued behind a non-finite step may still be running
            torch.cuda.synchronize(self.trainer.lm.device)
        self.graphs.clear()
        self.pool = None

    # ------------------------------------------------------------------ recording
    def _graph(self, key: tuple, lay, prefix, host: np.ndarray) -> _Graph:
        if self._state() != self.state:          # AdamW's state was replaced (a resume): every graph is stale
            self.clear()
        graph = self.graphs.get(key)
        if graph is not None:
            self.graphs.move_to_end(key)
            return graph
        graph = self.graphs[key] = self._capture(lay, prefix, host)
        self.state = self._state()              # the first recording may have created AdamW's state
        while len(self.graphs) > MAX_GRAPHS:
            self.graphs.popitem(last=False)
        return graph

    def _state(self) -> tuple:
        opt = self.trainer.optimizer
        ptrs = []
        for group in opt.param_groups:
            for p in group["params"]:
                ptrs.append(p.data_ptr())
                ptrs.extend(v.data_ptr() for v in opt.state.get(p, {}).values() if torch.is_tensor(v))
        return tuple(ptrs)

    def _capture(self, lay, prefix, host: np.ndarray) -> _Graph:
        t = self.trainer
        dev, fast, opt = t.lm.device, t.forward, t.optimizer
        inputs = torch.from_numpy(host).to(dev)
        prev_bad = torch.ones((), device=dev)             # the recording runs skip their update
        capturing = self.record == "cuda"
        # CUDA's fused AdamW reads a float32 learning rate from the device; a CPU's reads it as a double
        lr_dtype = torch.float32 if capturing else torch.float64
        lrs = [torch.tensor(float(g["lr"]), dtype=lr_dtype, device=dev) for g in opt.param_groups]
        params = [p for g in opt.param_groups for p in g["params"]]
        n_flat = len(lay.flat)
        autocast = _autocast_without_cache(dev)
        prefix_in = None
        if lay.prefix_kind == "rows":
            prefix = prefix_in = (prefix[0].clone(), prefix[1].clone())

        def step():
            with autocast:
                t.encoder.train()
                prompt = t.encoder()
                logits = _at_least_float32(t.lm.head(fast.hidden(lay, inputs[:n_flat], prefix, prompt)))
                loss = t.regularised(F.cross_entropy(logits, inputs[n_flat:]), prompt)
            loss.backward()
            loss = loss.detach()
            bad = torch.maximum((~torch.isfinite(loss)).float(), prev_bad)
            with _optimizer_inputs(opt, lrs, bad, capturable=capturing):
                if t.config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, t.config.grad_clip)
                opt.step()
            return loss, bad

        if not capturing:
            def rerun():
                graph.loss, graph.bad = step()
                for p in params:
                    p.grad = None

            graph = _Graph(rerun, inputs, prev_bad, lrs, None, None, prefix_in, (prefix,))
            self.stats["captures"] += 1
            return graph

        # two runs with the update skipped, on a side stream (compiles, allocates AdamW's state, warms
        # cuBLAS), then the recording; none of them changes a parameter, a moment or a step count
        side = torch.cuda.Stream(device=dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            for _ in range(2):
                step()
                for p in params:
                    p.grad = None
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            loss, bad = step()
        grads = tuple(p.grad for p in params)             # written by every replay; kept out of other use
        for p in params:
            p.grad = None
        if self.pool is None:
            self.pool = graph.pool()
        self.stats["captures"] += 1
        return _Graph(graph.replay, inputs, prev_bad, lrs, loss, bad, prefix_in, (prefix, grads, graph))


@contextlib.contextmanager
def _optimizer_inputs(opt, lrs, bad, capturable: bool):
    """AdamW reads its learning rates from ``lrs`` (device tensors) and skips its update when ``bad``;
    the groups are put back as they were afterwards (the schedule and checkpoints see floats)."""
    saved = [(g["lr"], g.get("capturable", False)) for g in opt.param_groups]
    for g, lr in zip(opt.param_groups, lrs):
        g["lr"] = lr
        g["capturable"] = capturable or g.get("capturable", False)
    opt.found_inf = bad
    try:
        yield
    finally:
        opt.__dict__.pop("found_inf", None)
        for g, (lr, cap) in zip(opt.param_groups, saved):
            g["lr"], g["capturable"] = lr, cap


def _autocast_without_cache(dev: torch.device):
    """The caller's autocast, without its cache of cast weights: a recorded step must cast the encoder's
    weights every replay (a cached cast would be read stale from the recording)."""
    kind = dev.type
    try:
        on = torch.is_autocast_enabled(kind)
        dtype = torch.get_autocast_dtype(kind)
    except (TypeError, AttributeError):               # torch < 2.4
        on = torch.is_autocast_enabled() if kind == "cuda" else torch.is_autocast_cpu_enabled()
        dtype = torch.get_autocast_gpu_dtype() if kind == "cuda" else torch.get_autocast_cpu_dtype()
    return torch.autocast(kind, dtype=dtype, enabled=on, cache_enabled=False)


def _uses_dropout(module: torch.nn.Module) -> bool:
    for m in module.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0:
            return True
        if isinstance(m, torch.nn.RNNBase) and m.dropout > 0:
            return True
    return False


__all__ = ["StepGraphs", "for_trainer", "unsupported_reason", "MAX_GRAPHS"]
