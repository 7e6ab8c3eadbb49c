"""What every prompt method shares: errors, argument checks, init strings, seeded layers, the registry,
and the two interfaces a method is asked through.

**What a method produces** (``PromptMethod.produces``) is one of two things, and callers ask this,
never the method's name:

- ``INPUT_LAYER`` -- ``forward()`` returns a ``(num_virtual_tokens, d)`` tensor that the frozen model
  places at the template's ``[P]`` slots (prompt tuning, P-tuning with an MLP or an LSTM).
- ``KEY_VALUE`` -- ``forward()`` returns a :class:`LayerPrompt`: keys/values for every attention
  layer, which runs the frozen model itself; the template has no ``[P]`` (prefix tuning).

Initialisation (the ``init`` string, the same for every method):

- ``"random"``         -- each row drawn from a normal with the vocabulary's per-dimension mean and
  std, so the prompt starts at the scale of real token embeddings (not ``N(0, 1)``, which is far
  off the embedding manifold for most models).
- ``"vocab"``          -- ``n`` rows of the embedding matrix, sampled without replacement (with
  replacement only if ``n > vocab``), seeded.
- ``"text:<phrase>"``  -- the embeddings of the phrase's tokens. The phrase is used exactly as
  written after the colon (a leading space matters to BPE: ``"text: the"`` starts with the token
  ``" the"``). Fewer tokens than ``n`` are cycled (``a b a b a``), more are truncated to the first
  ``n``.

**Registry.** Each method file ends with one ``register(TheEncoderClass)``; only
``ptuning_lab.prompts`` imports every method file, and no method file imports another.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch
from torch import nn

from ..suggest import did_you_mean

INPUT_LAYER = "input-layer"      # forward() -> (n, d) tensor for the template's [P] slots
KEY_VALUE = "key-value"          # forward() -> a LayerPrompt (keys/values at every layer)
INIT_FORMS = ('"random"', '"vocab"', '"text:<phrase>"')

Tokenize = Callable[[str], "list[int]"]


class EncoderError(ValueError):
    """A prompt encoder was asked for something it cannot do; the message says what to change."""


# ---------------------------------------------------------------------------------- argument checks
def check_positive_int(value, name: str, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EncoderError(f"{name} = {value!r}, but it must be a positive integer; {fix}")


def check_dropout(value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise EncoderError(f"dropout = {value!r}, but it must be in [0, 1); use e.g. dropout=0.1 "
                           f"(0.0 turns it off).")


def config_from_dict(cls, method: str, config: dict):
    """``cls(**config)``, with an error naming the valid fields when ``config`` has others."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(config) - names)
    if unknown:
        raise EncoderError(f"{cls.__name__} has no field(s) {unknown}; valid fields for method "
                           f"{method!r}: {sorted(names) or 'none'}.")
    return cls(**config)


# ---------------------------------------------------------------------------------- initialisation
def parse_init(init: str) -> tuple[str, str | None]:
    """Split an init string: ``"random"`` -> ``("random", None)``, ``"text:the capital"`` ->
    ``("text", "the capital")`` (the phrase is kept exactly as written after the colon)."""
    if isinstance(init, str):
        kind, sep, phrase = init.partition(":")
        kind = kind.strip().lower()
        if kind in ("random", "vocab") and not sep:
            return kind, None
        if kind == "text" and sep:
            if not phrase.strip():
                raise EncoderError(f"init {init!r} has no phrase after 'text:'; write e.g. "
                                   f"\"text:The capital of\".")
            return "text", phrase
    raise EncoderError(f"unknown init {init!r}; use one of {', '.join(INIT_FORMS)} "
                       f"(e.g. \"text:The capital of\").")


def embedding_matrix(embedding) -> torch.Tensor:
    """The ``(vocab, d)`` matrix of an ``nn.Embedding`` or a tensor, detached; an error otherwise."""
    if isinstance(embedding, nn.Embedding):
        embedding = embedding.weight
    if not isinstance(embedding, torch.Tensor) or embedding.dim() != 2 or 0 in embedding.shape:
        shape = tuple(embedding.shape) if isinstance(embedding, torch.Tensor) else type(embedding).__name__
        raise EncoderError(f"embedding must be the model's input embedding matrix, a (vocab, d) tensor; "
                           f"got {shape}. Pass lm.embedding.")
    return embedding.detach()


@torch.no_grad()
def initial_prompt(init: str, num_virtual_tokens: int, embedding: torch.Tensor,
                   tokenize: Tokenize | None = None, seed: int = 0) -> torch.Tensor:
    """The ``(num_virtual_tokens, d)`` starting prompt for an init string (float32, a copy).

    ``embedding``: the frozen input embedding matrix ``(vocab, d)``; ``tokenize``: text -> token
    ids, needed for ``"text:..."`` (e.g. ``lm.tokenize``). Deterministic for a ``seed``; the global
    RNG is not touched.
    """
    check_positive_int(num_virtual_tokens, "num_virtual_tokens", "a prompt needs at least one virtual token.")
    kind, phrase = parse_init(init)
    E = embedding_matrix(embedding)
    V, d = E.shape
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    n = num_virtual_tokens
    if kind == "random":
        stats = E.float()
        mean, std = stats.mean(0).cpu(), stats.std(0, correction=0).cpu()   # (d,), (d,)
        rows = mean + std * torch.randn(n, d, generator=gen)
        return rows.to(E.device)
    if kind == "vocab":
        ids = torch.randperm(V, generator=gen)[:n] if n <= V else torch.randint(V, (n,), generator=gen)
    else:
        if tokenize is None:
            raise EncoderError(f"init {init!r} needs a tokenize function to turn the phrase into token "
                               f"ids; pass tokenize=lm.tokenize.")
        token_ids = list(tokenize(phrase))
        if not token_ids:
            raise EncoderError(f"the phrase {phrase!r} of init {init!r} tokenizes to no tokens; "
                               f"use a phrase with at least one word.")
        bad = [i for i in token_ids if not 0 <= int(i) < V]
        if bad:
            raise EncoderError(f"the phrase {phrase!r} gives token ids {bad} outside the embedding's "
                               f"vocabulary of {V}; pass the tokenize function of the same model as the embedding.")
        # cycle a short phrase, truncate a long one
        ids = torch.tensor([int(token_ids[i % len(token_ids)]) for i in range(n)], dtype=torch.long)
    return E[ids.to(E.device)].float().clone()


# ---------------------------------------------------------------------------------- seeded layers
# Layers are built on the meta device and initialised from a local generator, so building an
# encoder never advances the global RNG and is reproducible from its seed alone. The
# distributions are PyTorch's defaults (Linear and LSTM: U(-1/sqrt(k), 1/sqrt(k))).
def seeded_linear(d_in: int, d_out: int, gen: torch.Generator, device, zero: bool = False) -> nn.Linear:
    """``nn.Linear(d_in, d_out)`` with PyTorch's default init drawn from ``gen`` (all zeros with ``zero``)."""
    layer = nn.Linear(d_in, d_out, device="meta").to_empty(device=device)
    seeded_uniform_(layer.parameters(), 1.0 / math.sqrt(d_in), gen, zero)
    return layer


@torch.no_grad()
def seeded_uniform_(params, bound: float, gen: torch.Generator, zero: bool = False) -> None:
    """Fill each parameter with ``U(-bound, bound)`` from ``gen`` (or zeros)."""
    for p in params:
        values = torch.zeros(p.shape) if zero else torch.empty(p.shape).uniform_(-bound, bound, generator=gen)
        p.copy_(values)


# ---------------------------------------------------------------------------------- what a K/V method produces
class LayerPrompt:
    """A prompt that lives in every attention layer (keys/values), not at the input.

    The frozen model hands its forward pass to it (:meth:`hidden`) and generation starts its cache
    with it (:meth:`cache`); checkpoints store :meth:`as_tensor`. Subclasses: ``PrefixKV``.
    """

    num_virtual_tokens: int

    def hidden(self, lm, batch) -> torch.Tensor:
        """Final hidden states ``(B, T, d)`` of ``lm`` on ``batch`` with this prompt in every layer."""
        raise NotImplementedError

    def cache(self, lm, batch_size: int = 1):
        """A fresh transformers cache holding this prompt for ``batch_size`` examples."""
        raise NotImplementedError

    def check_batch(self, batch) -> None:
        """Refuse a batch this prompt cannot run (e.g. one whose template has ``[P]`` slots)."""
        raise NotImplementedError

    def as_tensor(self) -> torch.Tensor:
        """The flat ``(n, width)`` tensor a checkpoint stores."""
        raise NotImplementedError


def stored_tensor(prompt) -> torch.Tensor:
    """The tensor a checkpoint stores for a prompt: the ``(n, d)`` prompt itself, or a
    :class:`LayerPrompt`'s flat ``(n, width)`` layout."""
    return prompt.as_tensor() if isinstance(prompt, LayerPrompt) else prompt


# ---------------------------------------------------------------------------------- the common interface
class PromptMethod(nn.Module):
    """What every prompt encoder answers, whatever it produces.

    Attributes: ``method`` (its registered name), ``produces`` (``INPUT_LAYER`` or ``KEY_VALUE``),
    ``config_class``, ``num_virtual_tokens``, ``hidden_size`` (the model width d), ``config`` (the
    method's dataclass, defaults resolved), ``init``, ``seed``. Class methods ``build`` (a fresh
    encoder) and ``from_spec`` (the shapes of a saved ``spec()``) are what the registry calls.
    """

    method: str = ""
    produces: str = INPUT_LAYER
    config_class: type = type(None)

    @property
    def uses_template_slots(self) -> bool:
        """True when ``forward()`` gives input-layer vectors for the template's ``[P]`` slots."""
        return self.produces == INPUT_LAYER

    @classmethod
    def build(cls, num_virtual_tokens: int, *, embedding=None, init: str = "random", tokenize=None, seed: int = 0,
              config=None, lm=None) -> "PromptMethod":
        raise NotImplementedError

    @classmethod
    def from_spec(cls, spec: dict, hidden_size: int) -> "PromptMethod":
        raise NotImplementedError

    @classmethod
    def make_config(cls, config):
        """``None`` -> defaults; a dict -> the method's dataclass; a dataclass must be the method's own."""
        if config is None:
            return cls.config_class()
        if isinstance(config, dict):
            return config_from_dict(cls.config_class, cls.method, config)
        if isinstance(config, cls.config_class):
            return config
        other = next((m for m, c in _REGISTRY.items() if isinstance(config, c.config_class)), None)
        if other is not None:
            raise EncoderError(f"config is a {type(config).__name__} (for method {other!r}) but method is "
                               f"{cls.method!r}; pass a {cls.config_class.__name__}(...) or a dict of its fields, "
                               f"or use method={other!r}.")
        raise EncoderError(f"config for method {cls.method!r} must be None, a dict or a {cls.config_class.__name__}, "
                           f"not {type(config).__name__}.")

    def spec(self) -> dict:
        """JSON-serialisable description; ``encoder_from_config(spec, d)`` rebuilds the same shapes."""
        return {"method": self.method, "num_virtual_tokens": self.num_virtual_tokens,
                "hidden_size": self.hidden_size, "init": self.init, "seed": self.seed,
                "config": dataclasses.asdict(self.config)}

    def stored(self, prompt) -> torch.Tensor:
        """The tensor a checkpoint stores for this encoder's ``prompt`` (see :func:`stored_tensor`)."""
        return stored_tensor(prompt)

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


class PromptEncoder(PromptMethod):
    """Base of the input-layer methods: ``forward() -> (num_virtual_tokens, hidden_size)`` float32 prompt.

    ``embedding.weight (n, d)`` holds the learnable inputs (for ``direct``, the prompt itself),
    named as in PEFT. Subclasses set ``method`` and ``config_class`` and build their layers.
    """

    def __init__(self, start: torch.Tensor, config, init: str, seed: int):
        super().__init__()
        n, d = start.shape
        self.num_virtual_tokens, self.hidden_size = n, d
        self.config, self.init, self.seed = config, init, int(seed)
        self.embedding = nn.Embedding(n, d, device="meta").to_empty(device=start.device)
        with torch.no_grad():
            self.embedding.weight.copy_(start)                   # a copy: the frozen matrix is not ours

    def forward(self) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def resolve_config(cls, config, d: int):
        """Fill the defaults that depend on the model width ``d`` (e.g. ``encoder_hidden_size=None``)."""
        return config

    @classmethod
    def build(cls, num_virtual_tokens: int, *, embedding=None, init: str = "random", tokenize=None, seed: int = 0,
              config=None, lm=None) -> "PromptEncoder":
        """A fresh encoder whose initial output is ``initial_prompt(init, ...)`` (residual forms)."""
        config = cls.make_config(config)
        start = initial_prompt(init, num_virtual_tokens, embedding, tokenize, seed)
        return cls(start, cls.resolve_config(config, start.shape[1]), init, seed)

    @classmethod
    def from_spec(cls, spec: dict, hidden_size: int) -> "PromptEncoder":
        n = spec["num_virtual_tokens"]
        check_positive_int(n, "num_virtual_tokens", "the spec is damaged; re-save it with encoder.spec().")
        init = spec.get("init", "random")
        parse_init(init)
        config = cls.resolve_config(cls.make_config(spec.get("config")), hidden_size)
        # zeros stand in for the init rows: the embedding matrix is not needed to rebuild shapes
        return cls(torch.zeros(n, hidden_size), config, init, spec.get("seed", 0))

    def extra_repr(self) -> str:
        return f"method={self.method!r}, num_virtual_tokens={self.num_virtual_tokens}, init={self.init!r}"


# ---------------------------------------------------------------------------------- the registry
_REGISTRY: dict[str, type[PromptMethod]] = {}


def register(cls: type[PromptMethod]) -> type[PromptMethod]:
    """Make ``cls`` a prompt method under its ``cls.method`` name (each method file calls this once)."""
    if not cls.method or cls.produces not in (INPUT_LAYER, KEY_VALUE):
        raise TypeError(f"{cls.__name__} needs a method name and produces = INPUT_LAYER or KEY_VALUE.")
    _REGISTRY[cls.method] = cls
    return cls


def registered_methods(produces: str | None = None) -> tuple[str, ...]:
    """Names of the registered methods in registration order (only those producing ``produces``)."""
    return tuple(m for m, c in _REGISTRY.items() if produces is None or c.produces == produces)


def method_class(method, input_layer_only: bool = False) -> type[PromptMethod]:
    """The registered class of ``method``; an error with a suggestion when there is none."""
    cls = _REGISTRY.get(method) if isinstance(method, str) else None
    if cls is None or (input_layer_only and cls.produces != INPUT_LAYER):
        known = registered_methods()
        raise EncoderError(f"unknown prompt encoder method {method!r}; use one of {', '.join(known)}."
                           + did_you_mean(method, known))
    return cls
