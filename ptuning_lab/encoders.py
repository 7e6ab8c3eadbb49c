"""Prompt encoders: the small trainable networks that produce the virtual-token embeddings.

A prompt encoder is an ``nn.Module`` whose ``forward()`` takes no input and returns the prompt,
a ``(num_virtual_tokens, d)`` tensor that ``FrozenLM`` places at the template's ``[P]`` slots.
Three methods share that interface:

- ``"direct"`` -- the prompt *is* the parameter (prompt tuning, Lester et al. 2021).
- ``"mlp"``    -- learnable inputs ``x (n, d)`` go through an MLP (P-tuning, Liu et al. 2021).
- ``"lstm"``   -- learnable inputs go through a bidirectional LSTM and an MLP head: the original
  P-tuning design, which lets every virtual token see its neighbours.

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

Residual form (``mlp``/``lstm``, ``residual=True``, the default): ``prompt = x + f(x)`` with ``x``
initialised by the scheme above and the *last* layer of ``f`` zero-initialised, so the initial
prompt equals ``initial_prompt(init, ...)`` exactly: a ``text:`` or ``vocab`` init really starts at
those tokens, whatever the method. With ``residual=False`` you get the PEFT form ``prompt = f(x)``
(all layers with PyTorch's default initialisation), whose initial prompt is *not* the init target.

Matching Hugging Face PEFT (``peft.tuners.p_tuning.PromptEncoder``), parameter names included,
so a PEFT state dict loads 1:1 into ours and gives the same prompt:

- PEFT MLP (``encoder_reparameterization_type="MLP"``, ``encoder_hidden_size=h``) is
  ``Linear(d,h) ReLU Linear(h,h) ReLU Linear(h,d)``, no residual, and it ignores
  ``encoder_num_layers`` and ``encoder_dropout``. Ours: ``MLPConfig(encoder_hidden_size=h,
  num_layers=3, dropout=0.0, residual=False)``.
- PEFT LSTM (``encoder_hidden_size=h``, ``encoder_num_layers=L``, ``encoder_dropout=p``) is
  ``LSTM(d, h per direction, L layers, bidirectional)`` then ``Linear(2h,2h) ReLU Linear(2h,d)``.
  Ours: ``LSTMConfig(encoder_hidden_size=h, num_layers=L, dropout=p, residual=False)``; the one
  difference is that our dropout also acts on the last LSTM layer's output (PEFT's only between
  layers, so with one layer it silently does nothing). Identical when ``p == 0`` or in eval mode.
- PEFT prompt tuning (``PromptEmbedding``) is ``"direct"``: one ``embedding.weight (n, d)``.

Example::

    >>> enc = build_encoder("lstm", 4, lm.embedding, init="text:The capital of",
    ...                     tokenize=lm.tokenize)                         # doctest: +SKIP
    >>> enc().shape                                                      # doctest: +SKIP
    torch.Size([4, 576])
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .suggest import did_you_mean

METHODS = ("direct", "mlp", "lstm")
INIT_FORMS = ('"random"', '"vocab"', '"text:<phrase>"')

Tokenize = Callable[[str], "list[int]"]


class EncoderError(ValueError):
    """A prompt encoder was asked for something it cannot do; the message says what to change."""


# ---------------------------------------------------------------------------------- configs
def _check_positive_int(value, name: str, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EncoderError(f"{name} = {value!r}, but it must be a positive integer; {fix}")


def _check_dropout(value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise EncoderError(f"dropout = {value!r}, but it must be in [0, 1); use e.g. dropout=0.1 "
                           f"(0.0 turns it off).")


@dataclass
class DirectConfig:
    """Prompt tuning has no hyperparameters beyond ``num_virtual_tokens`` and ``init``."""


@dataclass
class MLPConfig:
    """An MLP reparameterisation: ``prompt = x + f(x)`` (or ``f(x)`` with ``residual=False``).

    ``f`` has ``num_layers`` Linear layers, ``d -> h -> ... -> h -> d``, with ReLU (then dropout)
    between them. With ``num_layers=1`` ``f`` is a single ``Linear(d, d)``: there is no hidden
    layer, so ``encoder_hidden_size`` has no role and ``dropout > 0`` is refused.
    PEFT's MLP is ``MLPConfig(encoder_hidden_size=h, num_layers=3, dropout=0.0, residual=False)``.
    """

    encoder_hidden_size: int | None = field(
        default=None, metadata={"help": "Width h of the MLP's hidden layers; None = the model width d."})
    num_layers: int = field(
        default=2, metadata={"help": "Number of Linear layers in the MLP (PEFT's fixed MLP has 3)."})
    dropout: float = field(
        default=0.0, metadata={"help": "Dropout after each hidden ReLU, in [0, 1); 0 turns it off."})
    residual: bool = field(
        default=True, metadata={"help": "prompt = x + MLP(x) with the last layer zero-initialised, so "
                                        "the prompt starts exactly at the init; False = PEFT's MLP(x)."})

    def __post_init__(self):
        if self.encoder_hidden_size is not None:
            _check_positive_int(self.encoder_hidden_size, "encoder_hidden_size",
                                "use e.g. the model width, or None for it.")
        _check_positive_int(self.num_layers, "num_layers", "use 2 (the default) or more.")
        _check_dropout(self.dropout)
        if self.num_layers == 1 and self.dropout > 0:
            raise EncoderError(f"dropout = {self.dropout} with num_layers = 1: a one-layer MLP has no "
                               f"hidden activations for dropout to act on; use num_layers >= 2 or dropout=0.")


@dataclass
class LSTMConfig:
    """The original P-tuning encoder: ``x -> BiLSTM -> Linear(2h,2h) ReLU Linear(2h,d)``, plus ``x``.

    ``encoder_hidden_size`` is the LSTM width *per direction* (as in PEFT); the two directions are
    concatenated, so the head sees ``2h``. The default ``h = d // 2`` is Liu et al.'s code exactly
    (``LSTM(d, d//2, 2 layers, bidirectional)``, head ``Linear(d,d) ReLU Linear(d,d)``).
    """

    encoder_hidden_size: int | None = field(
        default=None, metadata={"help": "LSTM hidden size per direction h (as in PEFT); the head sees 2h. "
                                        "None = d // 2, the original P-tuning size."})
    num_layers: int = field(
        default=2, metadata={"help": "Number of stacked bidirectional LSTM layers."})
    dropout: float = field(
        default=0.0, metadata={"help": "Dropout on the output of every LSTM layer (the last one too), in [0, 1)."})
    residual: bool = field(
        default=True, metadata={"help": "prompt = x + head(LSTM(x)) with the head's last layer "
                                        "zero-initialised; False = PEFT's head(LSTM(x))."})

    def __post_init__(self):
        if self.encoder_hidden_size is not None:
            _check_positive_int(self.encoder_hidden_size, "encoder_hidden_size",
                                "use e.g. d // 2 (per direction), or None for it.")
        _check_positive_int(self.num_layers, "num_layers", "use 2 (the default) or more.")
        _check_dropout(self.dropout)


CONFIGS = {"direct": DirectConfig, "mlp": MLPConfig, "lstm": LSTMConfig}


def check_method(method, allow_prefix: bool = False) -> str:
    """``method`` if it names an encoder (``"prefix"`` too with ``allow_prefix``), else an error with a suggestion."""
    if method not in METHODS and not (allow_prefix and method == "prefix"):
        known = (*METHODS, "prefix")
        raise EncoderError(f"unknown prompt encoder method {method!r}; use one of {', '.join(known)}."
                           + did_you_mean(method, known))
    return method


def config_from_dict(cls, method: str, config: dict):
    """``cls(**config)``, with an error naming the valid fields when ``config`` has others."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(config) - names)
    if unknown:
        raise EncoderError(f"{cls.__name__} has no field(s) {unknown}; valid fields for method "
                           f"{method!r}: {sorted(names) or 'none'}.")
    return cls(**config)


def _make_config(method: str, config):
    """``None`` -> defaults; a dict -> that method's dataclass; a dataclass must be the method's own."""
    cls = CONFIGS[method]
    if config is None:
        return cls()
    if isinstance(config, dict):
        return config_from_dict(cls, method, config)
    if isinstance(config, tuple(CONFIGS.values())) and not isinstance(config, cls):
        right = next(m for m, c in CONFIGS.items() if isinstance(config, c))
        raise EncoderError(f"config is a {type(config).__name__} (for method {right!r}) but method is "
                           f"{method!r}; pass a {cls.__name__}(...) or a dict of its fields, or use "
                           f"method={right!r}.")
    if not isinstance(config, cls):
        raise EncoderError(f"config must be None, a dict or a {cls.__name__}, not {type(config).__name__}.")
    return config


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


def _embedding_matrix(embedding) -> torch.Tensor:
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
    _check_positive_int(num_virtual_tokens, "num_virtual_tokens", "a prompt needs at least one virtual token.")
    kind, phrase = parse_init(init)
    E = _embedding_matrix(embedding)
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


# ---------------------------------------------------------------------------------- layers
# Layers are built on the meta device and initialised from a local generator, so building an
# encoder never advances the global RNG and is reproducible from its seed alone. The
# distributions are PyTorch's defaults (Linear and LSTM: U(-1/sqrt(k), 1/sqrt(k))).
def _linear(d_in: int, d_out: int, gen: torch.Generator, device, zero: bool = False) -> nn.Linear:
    layer = nn.Linear(d_in, d_out, device="meta").to_empty(device=device)
    _uniform_(layer.parameters(), 1.0 / math.sqrt(d_in), gen, zero)
    return layer


def _lstm(d_in: int, hidden: int, num_layers: int, dropout: float, gen, device) -> nn.LSTM:
    # torch's LSTM dropout acts between layers only; the last layer's output gets ours in forward()
    lstm = nn.LSTM(d_in, hidden, num_layers=num_layers, dropout=dropout if num_layers > 1 else 0.0,
                   bidirectional=True, batch_first=True, device="meta").to_empty(device=device)
    _uniform_(lstm.parameters(), 1.0 / math.sqrt(hidden), gen)
    return lstm


@torch.no_grad()
def _uniform_(params, bound: float, gen: torch.Generator, zero: bool = False) -> None:
    for p in params:
        values = torch.zeros(p.shape) if zero else torch.empty(p.shape).uniform_(-bound, bound, generator=gen)
        p.copy_(values)


# ---------------------------------------------------------------------------------- encoders
class PromptEncoder(nn.Module):
    """Base class: ``forward() -> (num_virtual_tokens, hidden_size)`` float32 prompt.

    Attributes: ``method``, ``num_virtual_tokens``, ``hidden_size`` (the model width d), ``config``
    (the method's dataclass, with defaults resolved), ``init`` (the init string), ``seed``.
    ``embedding.weight (n, d)`` holds the learnable inputs (for ``direct``, the prompt itself),
    named as in PEFT.
    """

    method: str = ""

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

    def spec(self) -> dict:
        """JSON-serialisable description; ``encoder_from_config(spec, d)`` rebuilds the same shapes."""
        return {"method": self.method, "num_virtual_tokens": self.num_virtual_tokens,
                "hidden_size": self.hidden_size, "init": self.init, "seed": self.seed,
                "config": dataclasses.asdict(self.config)}

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def extra_repr(self) -> str:
        return f"method={self.method!r}, num_virtual_tokens={self.num_virtual_tokens}, init={self.init!r}"


class DirectPromptEncoder(PromptEncoder):
    """Prompt tuning: the ``(n, d)`` prompt is the only parameter."""

    method = "direct"

    def forward(self) -> torch.Tensor:
        return self.embedding.weight


class MLPPromptEncoder(PromptEncoder):
    """``x (n, d) -> x + mlp_head(x)`` (or ``mlp_head(x)``); see ``MLPConfig`` for the layers."""

    method = "mlp"

    def __init__(self, start, config: MLPConfig, init, seed):
        super().__init__(start, config, init, seed)
        d, h, L = self.hidden_size, config.encoder_hidden_size, config.num_layers
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        dims = [d] + [h] * (L - 1) + [d]
        layers: list[nn.Module] = []
        for i in range(L):
            last = i == L - 1
            layers.append(_linear(dims[i], dims[i + 1], gen, start.device, zero=last and config.residual))
            if not last:
                layers.append(nn.ReLU())
                # no Dropout module when p == 0 keeps the layer indices (state-dict keys) equal to PEFT's
                if config.dropout > 0:
                    layers.append(nn.Dropout(config.dropout))
        self.mlp_head = nn.Sequential(*layers)

    def forward(self) -> torch.Tensor:
        x = self.embedding.weight                                            # (n, d)
        out = self.mlp_head(x)                                               # (n, d)
        return x + out if self.config.residual else out


class LSTMPromptEncoder(PromptEncoder):
    """``x (n, d) -> x + mlp_head(BiLSTM(x))`` (or without ``x +``); see ``LSTMConfig``."""

    method = "lstm"

    def __init__(self, start, config: LSTMConfig, init, seed):
        super().__init__(start, config, init, seed)
        d, h = self.hidden_size, config.encoder_hidden_size
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        self.lstm_head = _lstm(d, h, config.num_layers, config.dropout, gen, start.device)
        self.mlp_head = nn.Sequential(
            _linear(2 * h, 2 * h, gen, start.device),
            nn.ReLU(),
            _linear(2 * h, d, gen, start.device, zero=config.residual),
        )

    def forward(self) -> torch.Tensor:
        x = self.embedding.weight                                            # (n, d)
        states = self.lstm_head(x.unsqueeze(0))[0]                           # (1, n, 2h)
        states = F.dropout(states, self.config.dropout, self.training)
        out = self.mlp_head(states).squeeze(0)                               # (n, d)
        return x + out if self.config.residual else out


_CLASSES = {"direct": DirectPromptEncoder, "mlp": MLPPromptEncoder, "lstm": LSTMPromptEncoder}


def _resolve(method: str, config, d: int):
    """Fill ``encoder_hidden_size=None`` with its default for model width ``d``."""
    if method == "mlp" and config.encoder_hidden_size is None:
        return dataclasses.replace(config, encoder_hidden_size=d)
    if method == "lstm" and config.encoder_hidden_size is None:
        return dataclasses.replace(config, encoder_hidden_size=max(1, d // 2))
    return config


def build_encoder(method: str, num_virtual_tokens: int, embedding: torch.Tensor, *, init: str = "random",
                  tokenize: Tokenize | None = None, seed: int = 0, config=None, lm=None) -> PromptEncoder:
    """A fresh prompt encoder whose initial output is ``initial_prompt(init, ...)`` (residual forms).

    ``embedding``: the frozen ``(vocab, d)`` matrix; only the init rows are copied, the encoder
    holds no reference to it. ``config``: ``None`` (defaults), a dict of fields, or the method's
    dataclass. The encoder lives on ``embedding.device`` in float32; same seed, same encoder.
    ``method="prefix"`` (K/V prefixes at every layer, see ``ptuning_lab.prefix``) also needs ``lm``.
    """
    # ---- prefix tuning lives in prefix.py: it needs the frozen model itself (layers, heads, activations)
    if method == "prefix":
        from .prefix import build_prefix_encoder

        if lm is None:
            raise EncoderError("method 'prefix' needs the frozen model: pass lm=lm (its layers, heads and the "
                               "init's activations shape the prefix), or call prefix.build_prefix_encoder(lm, ...).")
        return build_prefix_encoder(lm, num_virtual_tokens, init=init, tokenize=tokenize, seed=seed, config=config)
    # ---- end prefix
    method = check_method(method)
    config = _make_config(method, config)
    start = initial_prompt(init, num_virtual_tokens, embedding, tokenize, seed)
    config = _resolve(method, config, start.shape[1])
    return _CLASSES[method](start, config, init, seed)


def encoder_from_config(spec: dict, hidden_size: int) -> PromptEncoder:
    """An untrained encoder with the shapes of ``spec`` (from ``PromptEncoder.spec()``).

    For loading checkpoints: its weights are placeholders until ``load_state_dict``.
    ``hidden_size`` is the width d of the model the prompt is for and must match the spec's.
    """
    if not isinstance(spec, dict) or "method" not in spec or "num_virtual_tokens" not in spec:
        raise EncoderError("spec must be the dict from encoder.spec() (with 'method' and "
                           "'num_virtual_tokens'); save and load it as JSON next to the weights.")
    _check_positive_int(hidden_size, "hidden_size", "pass the model width, e.g. lm.hidden_size.")
    if spec.get("hidden_size", hidden_size) != hidden_size:
        raise EncoderError(f"the encoder was saved for a model of width {spec['hidden_size']} but this "
                           f"model has width {hidden_size}; load it with the model it was trained on.")
    if spec["method"] == "prefix":                    # ---- prefix tuning: see prefix.py
        from .prefix import prefix_encoder_from_spec

        return prefix_encoder_from_spec(spec, hidden_size)
    method = check_method(spec["method"])
    n = spec["num_virtual_tokens"]
    _check_positive_int(n, "num_virtual_tokens", "the spec is damaged; re-save it with encoder.spec().")
    init = spec.get("init", "random")
    parse_init(init)
    config = _resolve(method, _make_config(method, spec.get("config")), hidden_size)
    # zeros stand in for the init rows: the embedding matrix is not needed to rebuild shapes
    return _CLASSES[method](torch.zeros(n, hidden_size), config, init, spec.get("seed", 0))


__all__ = ["METHODS", "EncoderError", "DirectConfig", "MLPConfig", "LSTMConfig", "PromptEncoder",
           "DirectPromptEncoder", "MLPPromptEncoder", "LSTMPromptEncoder", "parse_init",
           "initial_prompt", "build_encoder", "encoder_from_config"]
