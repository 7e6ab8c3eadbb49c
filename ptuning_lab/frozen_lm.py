"""The frozen language model, run on templates whose ``[P]`` slots hold a trained prompt.

``FrozenLM`` owns the tokenizer, the model and its embedding matrix ``(vocab, d)``. It turns a
template and a list of inputs (strings for ``[X]``, or :class:`~ptuning_lab.tasks.Example` s /
mappings name -> text for named slots) into a right-padded batch, splices a ``(num_virtual_tokens, d)``
prompt into the input embeddings at the ``[P]`` positions (gradients flow to the prompt only),
and computes logits only where they are needed: the prediction position, optionally restricted
to a candidate token set. Position ids are explicit, so a padded batch gives the same
predictions as each example run alone.
"""
from __future__ import annotations

import inspect
import os
import warnings
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from .models import ModelLoadError, load_model
from .prompts import LayerPrompt
from .slots import as_inputs, slot_texts, truncate_slots
from .templates import Template


@dataclass
class Batch:
    """A right-padded batch of templated inputs.

    Attributes (B = batch, T = longest sequence):
        input_ids: (B, T) token ids; virtual and padding positions hold the pad id.
        attention_mask: (B, T) 1 for real (text or virtual) tokens, 0 for padding.
        virtual_mask: (B, T) True at ``[P]`` positions.
        virtual_index: (B, T) row of the prompt to place at each ``[P]`` position (0 elsewhere).
        last_index: (B,) position of the last real token: the prediction position.
        suffix_start: (B,) first position of an appended continuation (== length without one).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    virtual_mask: torch.Tensor
    virtual_index: torch.Tensor
    last_index: torch.Tensor
    suffix_start: torch.Tensor

    def to(self, device) -> "Batch":
        return Batch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


def readable_token(text: str) -> str:
    """Make a decoded token visible: leading/inner spaces as '␣', newlines as '⏎'."""
    return text.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥")


class FrozenLM:
    """A frozen causal LM that runs templates with virtual-token slots.

    >>> lm = FrozenLM.load("smollm2-135m")               # doctest: +SKIP
    >>> lm.predict_next("The capital of [X] is", ["France"], k=3)   # doctest: +SKIP
    [[(' Paris', 0.41), ...]]
    """

    def __init__(self, model, tokenizer, name: str = "model"):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.compiled = False                  # set by compile()
        self.compile_mode = None
        self.model.eval()
        self.model.requires_grad_(False)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.pad_id = tokenizer.pad_token_id
        probe_plain = tokenizer("a", add_special_tokens=False)["input_ids"]
        probe_special = tokenizer("a")["input_ids"]
        # special tokens the tokenizer puts in front by default (e.g. a BOS); GPT-2 and SmolLM2 add none
        self.prefix_ids: list[int] = probe_special[: len(probe_special) - len(probe_plain)] \
            if probe_special[-len(probe_plain):] == probe_plain else []
        self._text_cache: dict[str, list[int]] = {}
        self._reported_cuts: set = set()     # (template, slot texts) already counted in a truncation warning
        # transformers 5 renamed `past_key_values` to `cache`; older releases (Colab) keep the old name
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    @classmethod
    def load(cls, name: str = "auto", device=None, dtype=None, verbose: bool = True) -> "FrozenLM":
        """Load a frozen model by name ('auto', 'smollm2-135m', a Hugging Face id or a local directory);
        ``dtype`` None: float32."""
        _check_load_arguments(name, device, dtype)
        model, tokenizer, resolved = load_model(name, device=device, dtype=dtype, verbose=verbose)
        return cls(model, tokenizer, resolved)

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.embedding.device

    @property
    def transformer(self):
        """The model's transformer body (no LM head), put back in eval mode if something set it training.

        The frozen model never uses dropout: a PEFT wrapper or a ``model.train()`` elsewhere would
        otherwise make every forward random (and the fast path's self-check fail).
        """
        if self.model.training:
            self.model.eval()
        return self.model.base_model

    def compile(self, mode: str | None = None, **options) -> "FrozenLM":
        """``torch.compile`` the transformer body in place and return ``self``.

        Every path runs through it: the fast path, the plain path, generation, and a PEFT wrapper of
        the same model. ``mode="reduce-overhead"`` also records each shape's kernels as a CUDA graph
        and replays it, which is what pays on a GPU, where launching a small model's kernels one by
        one takes longer than running them. Each new input shape compiles once (tens of seconds):
        worth it for long runs at a fixed batch size, not for a notebook cell that trains 40 steps.
        ``options`` go to ``torch.compile`` (e.g. ``dynamic=False``).
        """
        self.model.base_model.compile(mode=mode, **options)
        self.compile_mode = mode      # "reduce-overhead" records CUDA graphs of its own (ptuning_lab.step_graphs)
        self.compiled = True          # the fast path then rounds its rows to fewer shapes (FastConfig.row_multiple)
        return self

    def begin_step(self) -> None:
        """Mark the start of a training step or an evaluation. A model compiled with
        ``mode="reduce-overhead"`` may then reuse the memory of the previous step's CUDA-graph
        outputs; otherwise this does nothing. The trainer calls it."""
        if self.device.type == "cuda" and hasattr(torch.compiler, "cudagraph_mark_step_begin"):
            torch.compiler.cudagraph_mark_step_begin()

    @property
    def embedding(self) -> torch.Tensor:
        """The input embedding matrix, (vocab, d), frozen."""
        return self.model.get_input_embeddings().weight

    @property
    def vocab_size(self) -> int:
        return self.embedding.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.embedding.shape[1]

    @property
    def max_positions(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", 2048))

    @property
    def token_strings(self) -> list[str]:
        """Every vocabulary token decoded to text (index = token id)."""
        return _token_strings(self.tokenizer, self.vocab_size)

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` with no special tokens."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def answer_ids(self, answer: str) -> list[int]:
        """Token ids of an answer as it follows a template (with its leading space)."""
        return self.tokenize(" " + answer.strip())

    # ------------------------------------------------------------------ batching
    def _text_ids(self, text: str) -> list[int]:
        ids = self._text_cache.get(text)
        if ids is None:
            ids = self._text_cache[text] = self.tokenize(text)
        return ids

    def slot_values(self, template, inputs) -> list[tuple[str, ...]]:
        """The text of each slot of ``template`` (in ``template.slot_names`` order), per input.

        An input is a string (fills ``[X]``), an :class:`~ptuning_lab.tasks.Example` (its
        ``slot(name)``), a mapping name -> text, or a tuple of texts in slot order. A slot the data
        lacks raises the ``TaskError`` of ``Example.slot``, which lists the fields it has.
        """
        template = Template.parse(template)
        return [slot_texts(template, item) for item in as_inputs(inputs)]

    def sequences(self, template, inputs, suffixes=None) -> list[tuple[list[int], list[int]]]:
        """Token ids per example with -1-based virtual markers.

        Returns a list of ``(ids, slots)``: ``ids`` with ``-1`` at virtual positions and ``slots``
        the prompt row of each virtual position in order; the suffix (if any) is appended.
        ``inputs`` as in :meth:`slot_values`. An example longer than ``max_positions`` (suffix
        included) is cut by the template's policy (``Template.with_truncation``; default: the
        longest slot, from its end, with a warning counting the examples cut).
        """
        template = Template.parse(template)
        values = self.slot_values(template, inputs)
        if not values:
            return []
        names = template.slot_names
        # each slot tokenized on its own (one tokenizer call per slot), with the space it moved out of the text
        columns = [self.tokenizer([(" " if template.slot_has_space(n) else "") + v[j] for v in values],
                                  add_special_tokens=False)["input_ids"] for j, n in enumerate(names)]
        fixed = len(self.prefix_ids) + template.num_virtual_tokens + \
            sum(len(self._text_ids(value)) for kind, value in template.parts if kind == "text")
        cut_rows, out = [], []
        for i in range(len(values)):
            slot_ids = [col[i] for col in columns]
            extra = len(suffixes[i]) if suffixes is not None else 0
            excess = fixed + extra + sum(map(len, slot_ids)) - self.max_positions
            if excess > 0:
                slot_ids = truncate_slots(template, slot_ids, excess, fixed + extra, self.max_positions, self.name)
                cut_rows.append(i)
            ids: list[int] = list(self.prefix_ids)
            slots: list[int] = []
            j = 0
            for kind, value in template.parts:
                if kind == "text":
                    ids.extend(self._text_ids(value))
                elif kind == "x":
                    ids.extend(slot_ids[j])
                    j += 1
                else:
                    slots.append(len(slots))
                    ids.append(-1)
            if suffixes is not None:
                ids.extend(suffixes[i])
            out.append((ids, slots))
        if cut_rows:
            self._warn_cut(template, [values[i] for i in cut_rows], len(values))
        return out

    def _warn_cut(self, template: Template, cut_values: list[tuple], n: int) -> None:
        new = [v for v in cut_values if (template.text, v) not in self._reported_cuts]
        if not new:               # these examples were reported already (the next epoch, another batch)
            return
        if len(self._reported_cuts) > 100_000:
            self._reported_cuts.clear()
        self._reported_cuts.update((template.text, v) for v in new)
        policy, names = template.truncate, template.slot_names
        what = f"slot [{names[0]}]" if len(names) == 1 else "the longest slot" if policy == "longest" \
            else f"slot [{policy}]"
        warnings.warn(f"{len(cut_values)} of {n} inputs were longer than the {self.max_positions} positions of model "
                      f"'{self.name}' (template {template.text!r}): cut {what} from its {template.truncate_side} "
                      f"to fit. Template.parse(...).with_truncation(truncate, side) chooses the slot ('longest', "
                      f"a slot name) and the side ('end', 'start'); 'error' refuses instead.",
                      UserWarning, stacklevel=3)

    def encode(self, template, inputs, suffixes=None) -> Batch:
        """Right-padded batch for ``template`` filled with each of ``inputs``.

        ``inputs``: strings (for ``[X]``), :class:`~ptuning_lab.tasks.Example` s or mappings
        name -> text (for named slots ``[premise]``...), or tuples of texts in slot order.
        ``suffixes``: optional token-id lists appended after the template (answers to score).
        Too long for ``max_positions``: the template's truncation policy applies (default: cut
        the longest slot from its end and warn; ``template.with_truncation("error")`` refuses).
        """
        inputs = as_inputs(inputs)
        if not inputs:   # checked first: the tokenizer fails on an empty list with an IndexError
            raise ValueError("no inputs to encode: give at least one input text.")
        seqs = self.sequences(template, inputs, suffixes)
        B, T = len(seqs), max(len(ids) for ids, _ in seqs)
        if T > self.max_positions:
            raise ValueError(f"a templated input is {T} tokens long but the model '{self.name}' accepts "
                             f"{self.max_positions}; shorten the input or use fewer virtual tokens.")
        input_ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        attention = torch.zeros((B, T), dtype=torch.long)
        virtual_mask = torch.zeros((B, T), dtype=torch.bool)
        virtual_index = torch.zeros((B, T), dtype=torch.long)
        suffix_start = torch.zeros(B, dtype=torch.long)
        for b, (ids, slots) in enumerate(seqs):
            row = torch.tensor(ids, dtype=torch.long)
            is_virtual = row < 0
            input_ids[b, : len(ids)] = torch.where(is_virtual, self.pad_id, row)
            attention[b, : len(ids)] = 1
            virtual_mask[b, : len(ids)] = is_virtual
            virtual_index[b, : len(ids)][is_virtual] = torch.tensor(slots, dtype=torch.long)
            suffix_start[b] = len(ids) - (len(suffixes[b]) if suffixes is not None else 0)
        last_index = attention.sum(1) - 1
        return Batch(input_ids, attention, virtual_mask, virtual_index, last_index, suffix_start).to(self.device)

    def embed(self, batch: Batch, prompt: torch.Tensor | None = None) -> torch.Tensor:
        """Input embeddings (B, T, d) with ``prompt`` (n, d) spliced in at the ``[P]`` positions."""
        embeds = self.model.get_input_embeddings()(batch.input_ids)
        if batch.virtual_mask.any():
            if prompt is None:
                raise ValueError("the template has [P] slots but no prompt was given: pass prompt=encoder() "
                                 "or use a template without [P] for a manual prompt.")
            n_needed = int(batch.virtual_index.max()) + 1
            if prompt.dim() != 2 or prompt.shape[0] < n_needed or prompt.shape[1] != embeds.shape[-1]:
                raise ValueError(f"the prompt has shape {tuple(prompt.shape)} but the template needs "
                                 f"({n_needed}, {embeds.shape[-1]}): one row per [P] of width d_model.")
            placed = prompt.to(embeds.dtype)[batch.virtual_index]          # (B, T, d)
            embeds = torch.where(batch.virtual_mask.unsqueeze(-1), placed, embeds)
        return embeds

    def hidden(self, batch: Batch, prompt: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states (B, T, d) of the frozen model (after its final norm).

        ``prompt``: (n, d) input-layer virtual tokens, or a :class:`ptuning_lab.prompts.LayerPrompt`
        (e.g. per-layer key/value prefixes), which runs the model itself.
        """
        if isinstance(prompt, LayerPrompt):
            return prompt.hidden(self, batch)
        embeds = self.embed(batch, prompt)
        T = embeds.shape[1]
        position_ids = torch.arange(T, device=embeds.device).unsqueeze(0).expand(embeds.shape[0], T)
        out = self.transformer(inputs_embeds=embeds, attention_mask=batch.attention_mask,
                                    position_ids=position_ids, use_cache=False)
        return out.last_hidden_state

    def head(self, hidden: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of hidden states (..., d) over the vocab, or only the ``candidates`` token ids (C,)."""
        out = self.model.get_output_embeddings()
        weight = out.weight if candidates is None else out.weight[candidates]
        bias = getattr(out, "bias", None)
        if bias is not None and candidates is not None:
            bias = bias[candidates]
        return F.linear(hidden.to(weight.dtype), weight, bias)

    def last_logits(self, batch: Batch, prompt: torch.Tensor | None = None,
                    candidates: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits after the template: (B, vocab), or (B, C) for ``candidates`` (C,)."""
        h = self.hidden(batch, prompt)
        h_last = h[torch.arange(h.shape[0], device=h.device), batch.last_index]
        return _at_least_float32(self.head(h_last, candidates))

    # ------------------------------------------------------------------ uses
    @torch.no_grad()
    def predict_next(self, template, inputs, k: int = 5, prompt: torch.Tensor | None = None,
                     batch_size: int = 64) -> list[list[tuple[str, float]]]:
        """Top-k next tokens (decoded text, probability) after the template, per input (as in :meth:`encode`)."""
        inputs = as_inputs(inputs)
        template = Template.parse(template)                  # once, not per batch
        results = []
        for start in range(0, len(inputs), batch_size):
            batch = self.encode(template, inputs[start:start + batch_size])
            probs = self.last_logits(batch, prompt).softmax(-1)
            top = probs.topk(k, dim=-1)
            for vals, ids in zip(top.values.tolist(), top.indices.tolist()):
                results.append([(self.tokenizer.decode([i]), round(v, 4)) for i, v in zip(ids, vals)])
        return results

    def continuation_logprob(self, template, inputs, continuations: list[list[int]],
                             prompt: torch.Tensor | None = None) -> torch.Tensor:
        """Sum of log-probabilities (B,) of each token-id continuation after its templated input."""
        batch = self.encode(template, inputs, suffixes=continuations)
        h = self.hidden(batch, prompt)
        B = h.shape[0]
        lengths = torch.tensor([len(c) for c in continuations], device=h.device)
        L = int(lengths.max())
        offs = torch.arange(L, device=h.device)
        # hidden state at position t predicts token t+1
        pos = (batch.suffix_start.unsqueeze(1) - 1 + offs).clamp(max=h.shape[1] - 1)
        valid = offs.unsqueeze(0) < lengths.unsqueeze(1)
        rows = torch.arange(B, device=h.device).unsqueeze(1)
        logp = _at_least_float32(self.head(h[rows, pos])).log_softmax(-1)    # (B, L, V)
        targets = batch.input_ids[rows, (pos + 1).clamp(max=h.shape[1] - 1)]
        token_lp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return (token_lp * valid).sum(1)

    @torch.no_grad()
    def generate(self, template, input_text="", prompt: torch.Tensor | None = None,
                 max_new_tokens: int = 20, do_sample: bool = False, temperature: float = 1.0,
                 top_k: int | None = None, seed: int | None = None, use_cache: bool = True) -> str:
        """Continue one templated input with the KV cache (greedy, or sampling).

        ``input_text``: the ``[X]`` text, or one Example / mapping for named slots.

        ``prompt``: (n, d) for the template's [P] slots, or a :class:`ptuning_lab.prompts.LayerPrompt`
        (a K/V prefix), which starts the cache.
        """
        from .generation import generate

        return generate(self, template, input_text, prompt, max_new_tokens=max_new_tokens, do_sample=do_sample,
                        temperature=temperature, top_k=top_k, seed=seed, use_cache=use_cache)


class ModelArgumentError(ModelLoadError, ValueError):
    """``FrozenLM.load`` got an argument of the wrong kind (a number for a name, an unknown device)."""


DEVICE_TYPES = ("cpu", "cuda", "mps")


def _check_load_arguments(name, device, dtype) -> None:
    if isinstance(name, bool) or not isinstance(name, (str, os.PathLike)) or not str(name).strip():
        raise ModelArgumentError(f"the model name must be a non-empty string or path, got {type(name).__name__} "
                                 f"{name!r:.40}; e.g. FrozenLM.load('auto'), 'smollm2-135m', 'gpt2' or a saved "
                                 "model's directory.")
    if device is not None and not isinstance(device, torch.device):
        if not isinstance(device, str):
            raise ModelArgumentError(f"device must be a string such as 'cpu' or 'cuda', got {type(device).__name__}.")
        try:
            kind = torch.device(device).type if device != "auto" else "cpu"
        except (RuntimeError, ValueError):
            kind = None
        if kind not in DEVICE_TYPES:
            raise ModelArgumentError(f"unknown device {device!r}; use one of {', '.join(DEVICE_TYPES)} (or cuda:N), or "
                                     "leave it out for the best available.")
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise ModelArgumentError(f"dtype must be a torch dtype such as torch.float32, got {dtype!r:.40}.")


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host tensor -> device; on CUDA through pinned memory, without blocking the host."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def right_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists -> ``input_ids (B, T)`` padded with ``pad_id`` on the right and ``attention_mask (B, T)``."""
    T = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for b, s in enumerate(seqs):
        input_ids[b, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[b, :len(s)] = 1
    return input_ids, mask


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits go up to float32 for a stable softmax; float64 stays float64 (gradcheck)."""
    return x if x.dtype == torch.float64 else x.float()


@lru_cache(maxsize=8)
def _token_strings(tokenizer, vocab_size: int) -> list[str]:
    strings = tokenizer.convert_ids_to_tokens(list(range(min(vocab_size, len(tokenizer)))))
    # decode each id on its own so byte-level BPE markers ('Ġ') become real spaces
    decoded = [tokenizer.decode([i]) for i in range(len(strings))]
    return decoded + [f"<unused{i}>" for i in range(len(decoded), vocab_size)]
