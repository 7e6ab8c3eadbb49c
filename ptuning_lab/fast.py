"""The fast path: the same next-token logits as ``FrozenLM.last_logits``, with less of the frozen model's work.

The frozen model never changes, and a causal model's states at a position depend only on the
tokens before it. Two consequences make a training step or an evaluation cheaper without changing
its result (equal to the plain path to float tolerance; ``tests/test_speed_paths.py`` checks the
logits and the gradients):

1. **Constant-prefix cache.** The tokens before the first ``[P]`` do not depend on the prompt.
   Their keys and values (every layer) are computed once per distinct prefix, without gradients,
   and reused by every later step and evaluation. For ``"The capital of [X] is [P]*6"`` the model
   then runs only the 6 virtual tokens of each example.
2. **Shared head.** Tokens that are the same in every example of a batch -- ``"[P]*3 The capital
   of"`` before ``[X]`` -- give the same states in every example. They are run once, with batch
   size 1, and their keys and values are broadcast to the batch; the gradient flows back through
   the broadcast (it is summed over the batch, as it should be).

Logits are computed only at the prediction position, and only for ``candidates`` when given.
Anything the fast path cannot do exactly (an encoder that runs the model itself, a model whose
cache it does not know) falls back to the plain path; a one-off self-check on the first batch
compares both and falls back, with a warning, if they differ.

    >>> fast = FastForward(lm, "[P]*3 The capital of [X] is [P]*3")          # doctest: +SKIP
    >>> fast.last_logits(["France", "Peru"], prompt).shape                  # doctest: +SKIP
    torch.Size([2, 49152])
"""
from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .frozen_lm import FrozenLM, _at_least_float32, right_pad, to_device
from .slots import as_inputs
from .kv_cache import layer_kv, make_cache, output_cache, unsupported_reason
from .layout import Layout, batch_layout
from .packing import PAD, SHARED, Seq, block_mask
from .prompts import LayerPrompt
from .templates import Template


@dataclass
class FastConfig:
    """Switches of the fast path (each one exact; turn one off to measure what it gives)."""

    cache_prefix: bool = field(default=True, metadata={
        "help": "Cache the frozen model's keys/values of the text before the first [P], once per distinct prefix."})
    share_head: bool = field(default=True, metadata={
        "help": "Run the tokens common to every example of a batch once (batch size 1) and broadcast them."})
    max_cache_mb: float = field(default=1024.0, metadata={
        "help": "Upper bound of the prefix cache in MiB; the least recently used prefixes are dropped beyond it."})
    verify: bool = field(default=True, metadata={
        "help": "On the first batch, compare with the plain path and fall back to it (with a warning) if they differ."})
    pack_tokens: int = field(default=0, metadata={
        "help": "Tokens per packed row: the live parts of several examples share one row of at most this length. "
                "0: 512 on a CPU (large matrix products); on a GPU d_model/6 rounded to a power of two within "
                "[128, 512], where attention over a packed row (quadratic in its length) costs at most about a "
                "sixth of the linear layers (GPT-2-small: 128, 9% faster steps than 512 on an H200)."})
    eval_batch_size: int = field(default=256, metadata={
        "help": "Examples per forward pass in evaluate() (no gradients are kept, so large batches are cheap)."})
    row_multiple: int = field(default=0, metadata={
        "help": "Round the packed rows' length up to a multiple of this (the padding is masked: results are "
                "unchanged), so batches of slightly different lengths share a shape: a compiled model compiles "
                "fewer times, a recorded step is replayed more often. 0: 16 when the model is compiled "
                "(FrozenLM.compile) or steps are recorded (cuda_graphs), else 1."})
    cuda_graphs: bool | None = field(default=None, metadata={
        "help": "Record each training step whole (encoder, model, loss, clipping, AdamW) as a CUDA graph per batch "
                "layout and replay it: one launch per step instead of hundreds, the same result "
                "(ptuning_lab.step_graphs). None: on when the model is on a GPU and the step can be recorded; "
                "True: also warn when it cannot; False: off. A model compiled with mode='reduce-overhead' "
                "records its own graphs instead (compile with mode=None to combine both)."})

    def __post_init__(self):
        if not self.max_cache_mb >= 0:
            raise ValueError(f"max_cache_mb must be >= 0 (got {self.max_cache_mb}); 0 turns the cache off.")
        if self.pack_tokens < 0:
            raise ValueError(f"pack_tokens must be >= 1, or 0 for the default (got {self.pack_tokens}); e.g. 512.")
        if self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1 (got {self.eval_batch_size}); e.g. 256.")
        if self.row_multiple < 0:
            raise ValueError(f"row_multiple must be >= 0 (got {self.row_multiple}); e.g. 16, or 0 for the default.")


class FastForward:
    """Next-token logits for ``template`` filled with inputs, computed with the prefix cache and shared head.

    ``last_logits(inputs, prompt, candidates)`` returns what ``lm.last_logits(lm.encode(template,
    inputs), prompt, candidates)`` returns: ``(B, vocab)`` or ``(B, C)`` float32, differentiable
    with respect to ``prompt (n, d)``. The interface of ``ptuning_lab.forward.PlainForward``
    (``last_logits``, ``evaluate``, ``uses_fast_path``, ``fallback_reason``).
    """

    def __init__(self, lm: FrozenLM, template, config: FastConfig | None = None):
        self.lm = lm
        self.template = Template.parse(template)
        self.config = config or FastConfig()
        self._cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._cache_bytes = 0
        self._seq_memo: dict[tuple, Seq] = {}         # slot texts -> sequence
        self._gold_memo: dict[str, int] = {}
        self._verified = not self.config.verify
        self.fallback_reason: str | None = unsupported_reason(lm.model)
        self.recorded = False          # set by a trainer whose steps are recorded as CUDA graphs (rows rounded)
        self.stats = {"calls": 0, "cache_hits": 0, "cache_misses": 0, "tokens_total": 0, "tokens_run": 0}

    # ---------------------------------------------------------------- public
    @property
    def active(self) -> bool:
        """False when this model or template runs on the plain path (``fallback_reason`` says why)."""
        return self.fallback_reason is None

    @property
    def uses_fast_path(self) -> bool:
        """The forward interface's name for :attr:`active` (see ``ptuning_lab.forward``)."""
        return self.active

    def last_logits(self, inputs: Sequence, prompt: torch.Tensor | None,
                    candidates: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, vocab)`` (or ``(B, C)``) next-token logits after the template, float32.

        ``inputs`` as in ``FrozenLM.encode``: strings for ``[X]``, Examples or mappings for named slots."""
        inputs = as_inputs(inputs)
        if not inputs:
            raise ValueError("no inputs: give at least one input text.")
        if not self.active or isinstance(prompt, LayerPrompt):      # a K/V prefix runs the model itself
            return self.lm.last_logits(self.lm.encode(self.template, inputs), prompt, candidates)
        seqs = self._sequences(inputs)
        self._check(seqs, prompt)     # bad input is an error, never a reason to fall back
        if not self._verified:
            self._verify(inputs, prompt)
            if not self.active:
                return self.lm.last_logits(self.lm.encode(self.template, inputs), prompt, candidates)
        h_last = self._last_hidden(seqs, prompt)      # the sequences once per call: host time on a GPU
        return _at_least_float32(self.lm.head(h_last, candidates))

    def last_hidden(self, inputs: Sequence, prompt: torch.Tensor | None) -> torch.Tensor:
        """Final hidden state ``(B, d)`` at each example's prediction position."""
        seqs = self._sequences(as_inputs(inputs))
        self._check(seqs, prompt)
        return self._last_hidden(seqs, prompt)

    def _last_hidden(self, seqs: list[Seq], prompt) -> torch.Tensor:
        self.stats["calls"] += 1
        self.stats["tokens_total"] += sum(s.n for s in seqs)
        return self._run(seqs, prompt)

    def answer_logits(self, inputs: Sequence[str], answer_ids: Sequence[Sequence[int]], prompt) -> torch.Tensor:
        """(B, L, vocab) logits at each answer token's position, as ``evaluation.answer_logits`` (teacher forcing).

        The answer's tokens (all but its last) are appended to the templated input and run live,
        after the cached prefix and the shared head; differentiable w.r.t. ``prompt``.
        """
        from .evaluation import answer_logits

        inputs = [inputs] if isinstance(inputs, str) else list(inputs)
        if not self.active or isinstance(prompt, LayerPrompt):
            return answer_logits(self.lm, self.template, inputs, answer_ids, prompt)
        seqs, read = [], []
        for seq, ids in zip(self._sequences(inputs), answer_ids):
            if not ids:
                raise ValueError("an answer tokenizes to nothing; remove empty answers from the task.")
            full = Seq.of(seq.ids + list(ids[:-1]))
            seqs.append(full._replace(first=min(full.first, seq.n - 1)))   # the answer never goes in the cache
            read.append(len(ids))
        self._check(seqs, prompt)
        if not self._verified:
            self._verify(inputs, prompt)
            if not self.active:
                return answer_logits(self.lm, self.template, inputs, answer_ids, prompt)
        self.stats["calls"] += 1
        self.stats["tokens_total"] += sum(s.n for s in seqs)
        logits = _at_least_float32(self.lm.head(self._run(seqs, prompt, np.array(read))))     # (sum(read), V)
        B, L = len(seqs), max(read)
        flat = [b * L + j for b, k in enumerate(read) for j in range(k)]
        flat = to_device(torch.tensor(flat, dtype=torch.long), self.lm.device)
        return logits.new_zeros(B * L, logits.shape[-1]).index_copy(0, flat, logits).view(B, L, -1)

    def _check(self, seqs: list[Seq], prompt) -> None:
        max_len = max(s.n for s in seqs)
        if max_len > self.lm.max_positions:
            raise ValueError(f"a templated input is {max_len} tokens long but the model '{self.lm.name}' accepts "
                             f"{self.lm.max_positions}; shorten the input or use fewer virtual tokens.")
        n_needed = max(s.n_virtual for s in seqs)
        if n_needed and prompt is None:
            raise ValueError("the template has [P] slots but no prompt was given: pass prompt=encoder() "
                             "or use a template without [P] for a manual prompt.")
        if prompt is not None:
            d = self.lm.hidden_size
            if prompt.dim() != 2 or prompt.shape[0] < n_needed or prompt.shape[1] != d:
                raise ValueError(f"the prompt has shape {tuple(prompt.shape)} but the template needs "
                                 f"({n_needed}, {d}): one row per [P] of width d_model.")

    def _sequences(self, inputs: list) -> list[Seq]:
        """Per input: its token ids (-1 at [P]) and the prompt row of each position, memoised per slot texts."""
        memo = self._seq_memo
        keys = self.lm.slot_values(self.template, inputs)
        missing = list(dict.fromkeys(k for k in keys if k not in memo))
        if missing:
            if len(memo) + len(missing) > 200_000:
                memo.clear()
            for k, (ids, _) in zip(missing, self.lm.sequences(self.template, missing)):
                memo[k] = Seq.of(ids)
        return [memo[k] for k in keys]

    def evaluate(self, examples, prompt: torch.Tensor | None, answers: Sequence[str] | None = None,
                 **task) -> dict:
        """``evaluation.evaluate`` on the fast path: ``{"n", "p_at_1", "loss"}`` (+ ``"candidate_accuracy"``
        and the task's metrics; ``task``: ``verbalizer=``, ``metrics=``, ``scoring=`` as there).

        P@1, the loss and exact match run on the fast path; candidate answers, label words and
        choices are ranked by ``evaluation.candidate_logprobs`` (one cached forward per example).
        """
        from .evaluation import score

        prompt = prompt.detach() if isinstance(prompt, torch.Tensor) else prompt
        return score(self.lm, self.template, examples, prompt, answers, self.config.eval_batch_size,
                     logits_fn=lambda inputs: self.last_logits(inputs, prompt), gold_fn=self._gold,
                     answer_logits_fn=lambda inputs, ids: self.answer_logits(inputs, ids, prompt), **task)

    def _gold(self, targets: list[str]) -> torch.Tensor:
        """(N,) first-token id of each answer, memoised (``evaluation.first_token_ids``)."""
        from .evaluation import first_token_ids

        missing = list(dict.fromkeys(t for t in targets if t not in self._gold_memo))
        if missing:
            self._gold_memo.update(zip(missing, first_token_ids(self.lm, missing).tolist()))
        return to_device(torch.tensor([self._gold_memo[t] for t in targets], dtype=torch.long), self.lm.device)

    def clear_cache(self) -> None:
        """Forget every cached prefix (e.g. after changing the model's weights or dtype)."""
        self._cache.clear()
        self._cache_bytes = 0

    @property
    def cache_mb(self) -> float:
        return self._cache_bytes / 2**20

    # ---------------------------------------------------------------- the work
    def _run(self, seqs: list[Seq], prompt, read: np.ndarray | None = None) -> torch.Tensor:
        """Final hidden state (B, d) at each prediction position, via packed rows.

        ``read``: (B,) how many last positions of each example to return (default 1 each): then
        (sum(read), d), example by example (an answer's tokens after the template).

        Each example = [constant prefix: cached keys/values] + [shared head: common to the batch]
        + [live part]. The live parts of several examples are packed into one row after a copy of
        the shared head; a block mask lets each example see only its own prefix, the head and
        itself (causally), and explicit position ids keep every token where the plain path puts
        it. Packing leaves no padding inside a row and keeps the matrix products large, which
        matters on a CPU, where every pass streams the model's weights from memory. The layout is
        computed on the host with array operations (:mod:`ptuning_lab.layout`) and goes to the
        device in one copy: on a GPU the host must keep up with the device.
        """
        lay = self.layout(seqs, read)
        # one host-to-device copy (pinned, asynchronous on a GPU): no stall of the queue behind it
        flat = to_device(torch.from_numpy(lay.flat), self.lm.device)
        return self.hidden(lay, flat, self.prefix_kv(lay, seqs), prompt)

    def layout(self, seqs: list[Seq], read: np.ndarray | None = None, count: bool = True) -> Layout:
        """The packed rows of ``seqs`` (host arrays only; its tokens counted in ``stats`` unless not ``count``)."""
        cfg = self.config
        lay = batch_layout(seqs, read, cache_prefix=cfg.cache_prefix and cfg.max_cache_mb > 0,
                           share_head=cfg.share_head, pack_tokens=cfg.pack_tokens or default_pack_tokens(self.lm),
                           row_multiple=self.row_multiple, pad_id=self.lm.pad_id)
        if count:
            self.stats["tokens_run"] += lay.tokens_run
        return lay

    @property
    def row_multiple(self) -> int:
        """What rows (and per-example cached prefixes) are rounded up to (``FastConfig.row_multiple``)."""
        return self.config.row_multiple or (16 if self.lm.compiled or self.recorded else 1)

    def count(self, seqs: list[Seq], lay: Layout) -> None:
        """Count a call run elsewhere on ``lay`` (a recorded training step) in ``stats``."""
        self.stats["calls"] += 1
        self.stats["tokens_total"] += sum(s.n for s in seqs)
        self.stats["tokens_run"] += lay.tokens_run

    def prefix_kv(self, lay: Layout, seqs: list[Seq]):
        """The cached keys/values the rows of ``lay`` start from, and their key segments (or None)."""
        if lay.prefix_kind == "shared":
            entry = self._prefix_cache([seqs[0].ids[:lay.f0]])[0]                  # (layers, 2, heads, L, hd)
            kv = entry.unsqueeze(2).expand(-1, -1, lay.R, -1, -1, -1)
            return kv, torch.full((lay.R, lay.f0), SHARED, dtype=torch.long, device=self.lm.device)
        if lay.prefix_kind == "rows":
            return self._row_prefixes([[seqs[b].ids[:lay.firsts[b]] for b in row] for row in lay.rows], lay.rows,
                                      self.row_multiple)
        return None

    def hidden(self, lay: Layout, flat: torch.Tensor, prefix, prompt) -> torch.Tensor:
        """The device's part of a step: the frozen model over the rows of ``lay`` (``flat`` on the device,
        ``prefix`` from :meth:`prefix_kv`), the hidden states at the read positions. No host data is read
        here, so a CUDA graph can replay it with new contents of ``flat`` (:mod:`ptuning_lab.step_graphs`)."""
        lm, dev, R, Q = self.lm, self.lm.device, lay.R, lay.Q
        tok, seg, pos = flat[:3 * R * Q].view(3, R, Q).unbind(0)
        last_t, v_at_t, v_slot_t = flat[3 * R * Q:].split([lay.n_read, lay.n_virtual, lay.n_virtual])
        kv, kseg = prefix if prefix is not None else (None, torch.zeros((R, 0), dtype=torch.long, device=dev))
        embeds = self._embed(tok, v_at_t, v_slot_t, prompt)
        if kv is None and lay.one_per_row:
            # one example per row, padding only at its end: causal attention is exactly the block
            # mask, and without a mask SDPA can take its fastest (flash) kernel
            mask = None
        else:
            mask = block_mask(seg, kseg, self._mask_dtype(embeds))
        cache = make_cache((kv[i, 0], kv[i, 1]) for i in range(kv.shape[0])) if kv is not None else None
        kwargs = {lm._cache_arg: cache, "use_cache": True} if cache is not None else {"use_cache": False}
        out = lm.transformer(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, **kwargs)
        return out.last_hidden_state.reshape(R * Q, -1)[last_t]                    # (B, d) or (sum(read), d)

    def _embed(self, tok: torch.Tensor, v_at: torch.Tensor, v_slot: torch.Tensor, prompt) -> torch.Tensor:
        """Token embeddings (R, Q, d), with prompt row ``v_slot[i]`` at flat position ``v_at[i]``.

        Only the virtual positions touch the prompt, so its gradient is a gather of a few rows, not
        a scatter from every position of the batch.
        """
        embeds = self.lm.model.get_input_embeddings()(tok)
        if prompt is None or not len(v_at):
            return embeds
        R, Q, d = embeds.shape
        return embeds.reshape(R * Q, d).index_copy(0, v_at, prompt.to(embeds.dtype)[v_slot]).view(R, Q, d)

    def _mask_dtype(self, embeds: torch.Tensor):
        """Boolean masks for SDPA; an additive float mask for the eager attention."""
        impl = getattr(self.lm.model.config, "_attn_implementation", "sdpa")
        return torch.bool if impl == "sdpa" else embeds.dtype

    # ---------------------------------------------------------------- the prefix cache
    def _key(self, ids) -> tuple:
        # keys/values computed under autocast have its dtype: keep them apart from full-precision ones
        return (_autocast_on(self.lm.device), tuple(ids))

    def _prefix_cache(self, prefixes: list[list[int]]) -> list[torch.Tensor]:
        """Per prefix: its keys/values, a tensor (layers, 2, heads, L, head_dim), computed once."""
        keys = [self._key(p) for p in prefixes]
        found = {k: self._cache[k] for k in keys if k in self._cache}
        missing = list(OrderedDict.fromkeys(k for k in keys if k not in found))
        self.stats["cache_hits"] += len(keys) - len(missing)
        self.stats["cache_misses"] += len(missing)
        for k in found:
            self._cache.move_to_end(k)
        if missing:
            fresh = dict(zip(missing, self._compute_prefixes([list(k[1]) for k in missing])))
            found.update(fresh)
            for k, t in fresh.items():          # may evict older entries; this batch keeps its own in `found`
                self._store(k, t)
        return [found[k] for k in keys]

    def _store(self, key, t: torch.Tensor) -> None:
        size = t.numel() * t.element_size()
        limit = self.config.max_cache_mb * 2**20
        if size > limit:
            return
        self._cache[key] = t
        self._cache_bytes += size
        while self._cache_bytes > limit:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= old.numel() * old.element_size()

    @torch.no_grad()
    def _compute_prefixes(self, prefixes: list[list[int]]) -> list[torch.Tensor]:
        lm, dev = self.lm, self.lm.device
        # inference tensors cannot take part in a later backward: build the cache as ordinary tensors
        with torch.inference_mode(False):
            ids, mask = right_pad(prefixes, lm.pad_id)
            ids, mask, L = ids.to(dev), mask.to(dev), ids.shape[1]
            pos = torch.arange(L, device=dev).unsqueeze(0).expand(len(prefixes), L)
            embeds = lm.model.get_input_embeddings()(ids)
            out = lm.transformer(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=True)
            kv = layer_kv(output_cache(out, lm._cache_arg))
            stacked = torch.stack([torch.stack([k, v]) for k, v in kv])   # (layers, 2, B, heads, L, hd)
            self.stats["tokens_run"] += int(mask.sum())
            return [stacked[:, :, b, :, :len(p)].clone() for b, p in enumerate(prefixes)]

    def _row_prefixes(self, row_prefixes: list[list[list[int]]], rows, multiple: int = 1):
        """Cached keys/values of each row's examples, concatenated: (layers, 2, R, heads, K, hd) and key segments
        (K rounded up to ``multiple``: masked padding, so batches share a shape)."""
        dev = self.lm.device
        flat = [p for ps in row_prefixes for p in ps if p]
        found = iter(self._prefix_cache(flat))
        per_row, segs = [], []
        for ps, row in zip(row_prefixes, rows):
            parts = [next(found) for p in ps if p]
            per_row.append(torch.cat(parts, dim=3) if len(parts) > 1 else parts[0] if parts else None)
            segs.append([b for p, b in zip(ps, row) for _ in p])
        K = -(-max(len(x) for x in segs) // multiple) * multiple
        ref = next(t for t in per_row if t is not None)
        kv = torch.stack([F.pad(t, (0, 0, 0, K - t.shape[3])) if t is not None
                          else ref.new_zeros(*ref.shape[:3], K, ref.shape[4]) for t in per_row], dim=2)
        kseg = torch.tensor([sg + [PAD] * (K - len(sg)) for sg in segs], dtype=torch.long)
        return kv, to_device(kseg, dev)

    # ---------------------------------------------------------------- safety
    def _verify(self, inputs, prompt) -> None:
        """Compare with the plain path on (up to) two examples; fall back if they differ."""
        self._verified = True
        probe = list(dict.fromkeys(self.lm.slot_values(self.template, inputs)))[:2]     # as slot-text tuples
        try:
            with torch.no_grad():
                p = prompt.detach() if prompt is not None else None
                plain = self.lm.last_logits(self.lm.encode(self.template, probe), p)
                fast = _at_least_float32(self.lm.head(self.last_hidden(probe, p)))
                if len(probe) > 1:       # the shared-head branch needs two examples that share a head
                    fast2 = _at_least_float32(self.lm.head(self.last_hidden([probe[0]] * 2, p)))[0]
                    plain2 = plain[0]
                else:
                    fast2 = plain2 = plain[0]
        except Exception as err:      # noqa: BLE001 -- any failure means: use the plain path
            self.fallback_reason = f"the fast path failed on this model ({type(err).__name__}: {err})"
        else:
            scale = plain.abs().max().clamp(min=1.0)
            low = self.lm.embedding.dtype in (torch.float16, torch.bfloat16) or _autocast_on(self.lm.device)
            tol = 5e-2 if low else 1e-3
            err = max(float((fast - plain).abs().max() / scale), float((fast2 - plain2).abs().max() / scale))
            if not math.isfinite(err) or err > tol:
                self.fallback_reason = f"the fast path's logits differ from the plain path's by {err:.2g} (relative)"
        if self.fallback_reason:
            self.clear_cache()
            warnings.warn(f"{self.fallback_reason}; using the plain path for model '{self.lm.name}'.")


# ---------------------------------------------------------------------------- helpers
def default_pack_tokens(lm: FrozenLM) -> int:
    """``FastConfig(pack_tokens=0)``: 512 on a CPU; on a GPU d_model / 6 as a power of two in [128, 512]."""
    if lm.device.type != "cuda":
        return 512
    return int(min(512, max(128, 2 ** round(math.log2(lm.hidden_size / 6)))))


def _autocast_on(device: torch.device) -> bool:
    try:
        return torch.is_autocast_enabled(device.type)
    except TypeError:                        # torch < 2.4: no device argument
        return torch.is_autocast_enabled() if device.type == "cuda" else torch.is_autocast_cpu_enabled()


__all__ = ["FastConfig", "FastForward"]
