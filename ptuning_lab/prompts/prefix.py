"""Prefix tuning: trainable key/value prefixes at every layer of the frozen model (Li & Liang, 2021).

Prompt tuning and P-tuning put ``n`` virtual tokens into the *input* layer, where the model
processes them like words. Prefix tuning is more invasive: it gives every attention layer ``n``
extra key/value pairs that each real token can attend to. Nothing is fed through the model's
lower layers; the prefix *is* the activations. Per layer ``l`` the prefix holds

    keys[l], values[l]: (num_kv_heads, n, head_dim)

so the whole prefix is a ``(num_layers, 2, num_kv_heads, n, head_dim)`` tensor (:class:`PrefixKV`).
For GPT-2, ``num_kv_heads = n_head`` and ``head_dim = n_embd // n_head``; for Llama-family models
with grouped-query attention, ``num_kv_heads = num_key_value_heads`` (fewer than the query heads)
and ``head_dim`` is the config's ``head_dim``. Geometry is read off the model's own cache, so any
model that fills a Hugging Face ``DynamicCache`` works.

Two parameterisations (:class:`PrefixConfig`):

- ``reparameterize=False`` (default) -- the flat prefix table ``embedding.weight (n,
  layers*2*kv_width)`` is the parameter (PEFT's default ``PrefixTuningConfig(prefix_projection=False)``,
  same name, same layout).
- ``reparameterize=True`` -- ``embedding.weight (n, kv_width)`` goes through
  ``transform = Linear(kv_width, h) Tanh Linear(h, layers*2*kv_width)``: all layers' keys and
  values come out of one MLP, Li & Liang's reparameterisation (they trained it with learning
  rates near 5e-5). With ``residual=True`` (default) the prefix is ``start + transform(embedding)``,
  the last Linear zero-initialised and ``start`` a frozen buffer, so training starts exactly at
  the init; ``residual=False`` is PEFT's ``prefix_projection=True`` (names and layout included).
  It has ~30x the parameters of the table and wants a ~10x smaller learning rate: on SmolLM2-135M
  ('capital', 15 steps) lr 3e-4 reached dev P@1 0.51, while the lab's default 3e-3 diverged over
  60 steps (the table trains well at 3e-3 to 1e-2). Hence the table is the default.

Initialisation reuses the lab's init strings (``"random"``, ``"vocab"``, ``"text:<phrase>"``): the
init's ``n`` input embeddings (:func:`ptuning_lab.prompts.base.initial_prompt`) are run through the
frozen model at positions ``0..n-1`` and their keys/values at every layer become the start -- Li &
Liang's "initialise with the activations of real words". With ``"text:The capital of"`` the
untrained prefix therefore gives *exactly* the logits of the model reading "The capital of"
before each input.

**Positions and padding** (PEFT's convention): the prefix occupies positions ``0..n-1`` and the
template's tokens get ``n, n+1, ...``; the attention mask is ``[ones(B, n), batch.attention_mask]``.
Batches are right-padded, so a token's position never depends on the other examples: a padded
batch gives the same logits as each example alone, as for the input-layer methods.

**PEFT.** Positions, masks, parameter names and the flat layout (:meth:`PrefixKV.as_tensor`) are
those of PEFT's prefix tuning: the same weights give the same logits, and a PEFT adapter holding
``prompt_embeddings = kv.as_tensor()`` reproduces any of these prefixes (:func:`peft_config_kwargs`).

**What cannot be shown.** A K/V prefix lives in each layer's key/value space, not in the
vocabulary's embedding space: nearest tokens, the vocabulary map and waywardness do not apply.
``prefix_norms`` (per layer) and ``prefix_norm_table`` (per layer, K/V, virtual token) in
:mod:`ptuning_lab.prompts.prefix_norms` show what can be shown instead.

Example::

    >>> enc = build_prefix_encoder(lm, 6, init="text:The capital of")      # doctest: +SKIP
    >>> kv = enc()                                                         # doctest: +SKIP
    >>> kv.shape                      # (layers, 2, kv_heads, n, head_dim)   doctest: +SKIP
    torch.Size([30, 2, 3, 6, 64])
    >>> lm.last_logits(lm.encode("The capital of [X] is", ["France"]), kv)  # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from ..kv_cache import layer_kv, make_cache, output_cache
from .base import (KEY_VALUE, EncoderError, LayerPrompt, PromptMethod, Tokenize, check_positive_int, initial_prompt,
                   parse_init, register, seeded_linear)

METHOD = "prefix"


# ---------------------------------------------------------------------------------- config
@dataclass
class PrefixConfig:
    """How the per-layer key/value prefix is parameterised (see the module docstring).

    PEFT's ``PrefixTuningConfig(prefix_projection=False)`` is ``PrefixConfig(reparameterize=False)``;
    ``prefix_projection=True, encoder_hidden_size=h`` is ``PrefixConfig(reparameterize=True,
    encoder_hidden_size=h, residual=False)``.
    """

    reparameterize: bool = field(
        default=False, metadata={"help": "False: the prefix table itself is the parameter (PEFT's default); "
                                         "True: embedding (n, kv_width) -> Linear Tanh Linear -> all layers' "
                                         "keys and values (Li & Liang's MLP; use a ~10x smaller lr)."})
    encoder_hidden_size: int | None = field(
        default=None, metadata={"help": "Hidden width h of the reparameterisation MLP; None = the model's "
                                        "key/value width (num_kv_heads * head_dim), as in PEFT."})
    residual: bool = field(
        default=True, metadata={"help": "With reparameterize: prefix = start + MLP(embedding), the last layer "
                                        "zero-initialised, so training starts exactly at the init's "
                                        "activations; False = PEFT's MLP(embedding) from a random start."})

    def __post_init__(self):
        for name in ("reparameterize", "residual"):
            if not isinstance(getattr(self, name), bool):
                raise EncoderError(f"{name} = {getattr(self, name)!r}, but it must be True or False.")
        if self.encoder_hidden_size is not None:
            check_positive_int(self.encoder_hidden_size, "encoder_hidden_size",
                                "use e.g. 512, or None for the model's key/value width.")
        if not self.reparameterize and self.encoder_hidden_size is not None:
            raise EncoderError(f"encoder_hidden_size = {self.encoder_hidden_size} has no effect with "
                               f"reparameterize=False (there is no MLP); drop it or set reparameterize=True.")


@dataclass(frozen=True)
class Geometry:
    """The shape of one model's key/value cache: what a prefix for it must look like."""

    num_layers: int
    num_kv_heads: int
    head_dim: int

    @property
    def kv_width(self) -> int:
        """Width of one layer's keys (or values) for one token: ``num_kv_heads * head_dim``."""
        return self.num_kv_heads * self.head_dim

    @property
    def flat_width(self) -> int:
        """Width of one virtual token in the flat layout: ``num_layers * 2 * kv_width``."""
        return self.num_layers * 2 * self.kv_width


# ---------------------------------------------------------------------------------- the prefix
class PrefixKV(LayerPrompt):
    """Per-layer key/value prefixes: ``kv (num_layers, 2, num_kv_heads, n, head_dim)``.

    ``kv[l, 0]`` are layer ``l``'s keys, ``kv[l, 1]`` its values; the same prefix serves every
    example of a batch. Pass it wherever a prompt goes (``lm.last_logits(batch, kv)``,
    ``evaluate``, ``lm.generate``): :meth:`FrozenLM.hidden` hands the forward pass to :meth:`hidden`.
    Keys are stored as the model caches them (for rotary models: already rotated, as at positions
    ``0..n-1``).
    """

    def __init__(self, kv: torch.Tensor):
        if kv.dim() != 5 or kv.shape[1] != 2:
            raise ValueError(f"a prefix must be (num_layers, 2, num_kv_heads, n, head_dim), got "
                             f"{tuple(kv.shape)}; build it with PrefixKV.from_tensor for a flat (n, width) prefix.")
        self.kv = kv

    # ---------------------------------------------------------------- shape and layout
    @property
    def shape(self) -> torch.Size:
        return self.kv.shape

    @property
    def num_virtual_tokens(self) -> int:
        return self.kv.shape[3]

    @property
    def geometry(self) -> Geometry:
        L, _, H, _, hd = self.kv.shape
        return Geometry(L, H, hd)

    @property
    def requires_grad(self) -> bool:
        return self.kv.requires_grad

    @property
    def device(self) -> torch.device:
        return self.kv.device

    @property
    def dtype(self) -> torch.dtype:
        return self.kv.dtype

    def as_tensor(self) -> torch.Tensor:
        """The flat layout ``(n, num_layers * 2 * num_kv_heads * head_dim)``: what checkpoints store.

        Column order is (layer, key/value, head, head_dim), PEFT's ``prompt_embeddings`` layout for
        prefix tuning, so this tensor is what a PEFT prefix-tuning adapter saves.
        """
        n = self.num_virtual_tokens
        return self.kv.permute(3, 0, 1, 2, 4).reshape(n, -1)

    @classmethod
    def from_tensor(cls, flat: torch.Tensor, geometry: Geometry) -> "PrefixKV":
        """Inverse of :meth:`as_tensor`: ``flat (n, geometry.flat_width)`` -> PrefixKV."""
        if flat.dim() != 2 or flat.shape[1] != geometry.flat_width:
            raise ValueError(f"a flat prefix for {geometry.num_layers} layers x 2 x {geometry.num_kv_heads} heads x "
                             f"{geometry.head_dim} must be (n, {geometry.flat_width}), got {tuple(flat.shape)}; "
                             f"it belongs to another model.")
        n = flat.shape[0]
        kv = flat.reshape(n, geometry.num_layers, 2, geometry.num_kv_heads, geometry.head_dim)
        return cls(kv.permute(1, 2, 3, 0, 4))

    # ---------------------------------------------------------------- tensor-like helpers
    def detach(self) -> "PrefixKV":
        return PrefixKV(self.kv.detach())

    def to(self, *args, **kwargs) -> "PrefixKV":
        return PrefixKV(self.kv.to(*args, **kwargs))

    def cpu(self) -> "PrefixKV":
        return PrefixKV(self.kv.cpu())

    def float(self) -> "PrefixKV":
        return PrefixKV(self.kv.float())

    def clone(self) -> "PrefixKV":
        return PrefixKV(self.kv.clone())

    def __repr__(self) -> str:
        L, _, H, n, hd = self.kv.shape
        return f"PrefixKV(layers={L}, kv_heads={H}, virtual_tokens={n}, head_dim={hd}, dtype={self.kv.dtype})"

    # ---------------------------------------------------------------- running the model
    def cache(self, lm, batch_size: int = 1):
        """A fresh Hugging Face ``DynamicCache`` holding the prefix for ``batch_size`` examples.

        Fresh each call: the model appends the batch's own keys/values to the cache it is given.
        """
        self._check_model(lm)
        kv = self.kv.to(device=lm.device, dtype=lm.embedding.dtype)
        return make_cache(((kv[layer, 0].unsqueeze(0).expand(batch_size, -1, -1, -1),          # (B, H, n, hd)
                            kv[layer, 1].unsqueeze(0).expand(batch_size, -1, -1, -1)) for layer in range(kv.shape[0])),
                          lm.model.config)

    def hidden(self, lm, batch) -> torch.Tensor:
        """Final hidden states ``(B, T, d)`` of the frozen model with this prefix at every layer.

        Positions of the template's tokens start at ``n`` (after the prefix) and the prefix is
        visible to every real token; right padding stays at the end, so padded == alone.
        """
        self.check_batch(batch)
        B, T = batch.input_ids.shape
        n = self.num_virtual_tokens
        if n + T > lm.max_positions:
            raise ValueError(f"{n} prefix positions + a {T}-token input exceed the model's {lm.max_positions} "
                             f"positions; use fewer virtual tokens or shorter inputs.")
        embeds = lm.model.get_input_embeddings()(batch.input_ids)
        position_ids = torch.arange(n, n + T, device=embeds.device).unsqueeze(0).expand(B, T)
        prefix_mask = torch.ones(B, n, dtype=batch.attention_mask.dtype, device=embeds.device)
        attention_mask = torch.cat([prefix_mask, batch.attention_mask], dim=1)           # (B, n + T)
        out = lm.model.base_model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                                  use_cache=True, **{lm._cache_arg: self.cache(lm, B)})
        return out.last_hidden_state

    def check_batch(self, batch) -> None:
        """Refuse a batch whose template has ``[P]`` slots: a prefix has nothing to put there."""
        if bool(batch.virtual_mask.any()):
            raise ValueError("this template has [P] slots, but prefix tuning puts its virtual tokens in every "
                             "layer's keys/values, not in the text: remove the [P]s from the template "
                             "(e.g. \"The capital of [X] is\").")

    def _check_model(self, lm) -> None:
        want = model_geometry(lm)
        if want != self.geometry:
            raise ValueError(f"this prefix is for a model with {self.geometry} but '{lm.name}' has {want}; "
                             f"use the model the prefix was trained on.")


# ---------------------------------------------------------------------------------- geometry and activations
@torch.no_grad()
def activations_kv(lm, embeds: torch.Tensor) -> torch.Tensor:
    """Keys/values ``(num_layers, 2, num_kv_heads, n, head_dim)`` of the frozen model reading ``embeds (n, d)``.

    The inputs sit at positions ``0..n-1``, exactly where a prefix sits; the result is in the
    model's dtype.
    """
    n = embeds.shape[0]
    x = embeds.to(device=lm.device, dtype=lm.embedding.dtype).unsqueeze(0)
    out = lm.model.base_model(inputs_embeds=x, position_ids=torch.arange(n, device=lm.device).unsqueeze(0),
                              use_cache=True)
    layers = layer_kv(output_cache(out, lm._cache_arg))
    shapes = {tuple(k.shape) for k, _ in layers} | {tuple(v.shape) for _, v in layers}
    if len(shapes) != 1:
        raise EncoderError(f"'{lm.name}' has layers with different key/value shapes {sorted(shapes)} "
                           f"(sliding or shared attention); prefix tuning here supports GPT-2 and Llama-style "
                           f"models with the same attention in every layer.")
    return torch.stack([torch.stack([k[0], v[0]]) for k, v in layers])


def model_geometry(lm) -> Geometry:
    """The key/value geometry of ``lm``, read from its config (checked against a real forward in
    :func:`build_prefix_encoder`)."""
    cfg = lm.model.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return Geometry(int(cfg.num_hidden_layers), int(kv_heads), int(head_dim))


# ---------------------------------------------------------------------------------- the encoder
class PrefixEncoder(PromptMethod):
    """Prefix tuning's encoder: ``forward() -> PrefixKV (num_layers, 2, num_kv_heads, n, head_dim)``.

    The interface of every method (:class:`ptuning_lab.prompts.base.PromptMethod`); it produces
    ``KEY_VALUE``: a K/V prefix, not an ``(n, d)`` prompt, so the template needs no ``[P]``.

    Parameters (PEFT names): ``embedding.weight`` -- ``(n, flat_width)`` without
    reparameterisation, else ``(n, kv_width)`` feeding ``transform``; buffer ``start (n, flat_width)``
    -- the init's activations, added when ``residual`` (frozen, saved with the weights).
    """

    method = METHOD
    produces = KEY_VALUE
    config_class = PrefixConfig

    def __init__(self, start: torch.Tensor, geometry: Geometry, hidden_size: int, config: PrefixConfig,
                 init: str, seed: int):
        super().__init__()
        n, width = start.shape
        if width != geometry.flat_width:
            raise EncoderError(f"start has width {width} but {geometry} needs {geometry.flat_width}.")
        self.num_virtual_tokens, self.hidden_size, self.geometry = n, int(hidden_size), geometry
        self.config, self.init, self.seed = config, init, int(seed)
        device = start.device
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        if not config.reparameterize:
            self.embedding = nn.Embedding(n, width, device="meta").to_empty(device=device)
            with torch.no_grad():
                self.embedding.weight.copy_(start)
            return
        kv_width, h = geometry.kv_width, config.encoder_hidden_size
        self.embedding = nn.Embedding(n, kv_width, device="meta").to_empty(device=device)
        with torch.no_grad():                                   # nn.Embedding's N(0, 1), from our generator
            self.embedding.weight.copy_(torch.randn(n, kv_width, generator=gen))
        self.transform = nn.Sequential(
            seeded_linear(kv_width, h, gen, device),
            nn.Tanh(),
            seeded_linear(h, width, gen, device, zero=config.residual),
        )
        if config.residual:
            self.register_buffer("start", start.detach().float().clone())

    def flat(self) -> torch.Tensor:
        """The prefix in the flat layout ``(n, num_layers * 2 * kv_width)`` (with gradients)."""
        if not self.config.reparameterize:
            return self.embedding.weight
        out = self.transform(self.embedding.weight)
        return self.start + out if self.config.residual else out

    def forward(self) -> PrefixKV:
        return PrefixKV.from_tensor(self.flat(), self.geometry)

    def spec(self) -> dict:
        """JSON-serialisable description; ``encoder_from_config(spec, d)`` rebuilds the same shapes."""
        g = self.geometry
        return {**super().spec(), "num_layers": g.num_layers, "num_kv_heads": g.num_kv_heads, "head_dim": g.head_dim,
                # what the checkpoint's "prompt" tensor holds: (n, prompt_width), see PrefixKV.as_tensor
                "prompt_width": g.flat_width}

    @classmethod
    def build(cls, num_virtual_tokens: int, *, embedding=None, init: str = "random", tokenize=None, seed: int = 0,
              config=None, lm=None) -> "PrefixEncoder":
        """:func:`build_prefix_encoder`; ``lm`` is required (``embedding`` is ``lm``'s own)."""
        if lm is None:
            raise EncoderError("method 'prefix' needs the frozen model: pass lm=lm (its layers, heads and the "
                               "init's activations shape the prefix), or call build_prefix_encoder(lm, ...).")
        return build_prefix_encoder(lm, num_virtual_tokens, init=init, tokenize=tokenize, seed=seed, config=config)

    @classmethod
    def from_spec(cls, spec: dict, hidden_size: int) -> "PrefixEncoder":
        return prefix_encoder_from_spec(spec, hidden_size)

    def extra_repr(self) -> str:
        g = self.geometry
        return (f"method='prefix', num_virtual_tokens={self.num_virtual_tokens}, layers={g.num_layers}, "
                f"kv_heads={g.num_kv_heads}, head_dim={g.head_dim}, reparameterize={self.config.reparameterize}, "
                f"init={self.init!r}")


def _resolve(config: PrefixConfig, geometry: Geometry) -> PrefixConfig:
    if config.reparameterize and config.encoder_hidden_size is None:
        return dataclasses.replace(config, encoder_hidden_size=geometry.kv_width)
    return config


def build_prefix_encoder(lm, num_virtual_tokens: int, *, init: str = "random", tokenize: Tokenize | None = None,
                         seed: int = 0, config=None) -> PrefixEncoder:
    """A fresh prefix encoder for the frozen model ``lm`` (a :class:`FrozenLM`).

    The start is the keys/values of ``lm`` reading ``initial_prompt(init, n, lm.embedding)`` at
    positions ``0..n-1``; ``tokenize`` defaults to ``lm.tokenize``. ``config``: ``None``, a dict of
    :class:`PrefixConfig` fields, or a ``PrefixConfig``. float32 on ``lm.device``; same seed, same encoder.
    """
    config = PrefixEncoder.make_config(config)
    check_positive_int(num_virtual_tokens, "num_virtual_tokens", "a prefix needs at least one virtual token.")
    if num_virtual_tokens >= lm.max_positions:
        raise EncoderError(f"{num_virtual_tokens} virtual tokens do not fit the model's {lm.max_positions} "
                           f"positions; use far fewer (5-20 is typical).")
    embedding = lm.embedding.detach()
    start_embeds = initial_prompt(init, num_virtual_tokens, embedding, tokenize or lm.tokenize, seed)
    kv = activations_kv(lm, start_embeds)                                 # (L, 2, H, n, hd)
    geometry = PrefixKV(kv).geometry
    if geometry != model_geometry(lm):
        raise EncoderError(f"'{lm.name}' caches keys/values as {geometry} but its config says "
                           f"{model_geometry(lm)}; this model family is not supported by prefix tuning here.")
    start = PrefixKV(kv.float()).as_tensor().contiguous()
    return PrefixEncoder(start, geometry, lm.hidden_size, _resolve(config, geometry), init, seed)


def prefix_encoder_from_spec(spec: dict, hidden_size: int) -> PrefixEncoder:
    """An untrained prefix encoder with the shapes of ``spec`` (weights: placeholders until
    ``load_state_dict``). Called by :func:`ptuning_lab.prompts.encoder_from_config`."""
    missing = [k for k in ("num_layers", "num_kv_heads", "head_dim") if k not in spec]
    if missing:
        raise EncoderError(f"the prefix spec lacks {missing}: it was not written by PrefixEncoder.spec(); "
                           f"train again.")
    n = spec["num_virtual_tokens"]
    check_positive_int(n, "num_virtual_tokens", "the spec is damaged; re-save it with encoder.spec().")
    geometry = Geometry(int(spec["num_layers"]), int(spec["num_kv_heads"]), int(spec["head_dim"]))
    init = spec.get("init", "random")
    parse_init(init)
    config = _resolve(PrefixEncoder.make_config(spec.get("config")), geometry)
    return PrefixEncoder(torch.zeros(n, geometry.flat_width), geometry, hidden_size, config, init, spec.get("seed", 0))


# ---------------------------------------------------------------------------------- PEFT
def peft_config_kwargs(spec: dict) -> dict:
    """Keyword arguments of ``peft.PrefixTuningConfig`` for a prefix encoder's ``spec()``.

    PEFT's adapter file holds ``prompt_embeddings`` = :meth:`PrefixKV.as_tensor` (n, flat_width),
    used as-is in inference mode, so *every* parameterisation exports exactly (no MLP is needed to
    reproduce the logits). Positions, masks and layout are PEFT's (tested: identical logits).
    For continuing training in PEFT, ``reparameterize=False`` or ``residual=False`` encoders load
    1:1 into ``PrefixEncoder`` (same names and shapes, ``prefix_projection`` as returned here);
    the residual form has a frozen ``start`` that PEFT's encoder cannot hold.
    """
    if spec.get("method") != METHOD:
        raise ValueError(f"not a prefix-tuning spec (method {spec.get('method')!r}).")
    cfg = spec.get("config") or {}
    kv_width = int(spec["num_kv_heads"]) * int(spec["head_dim"])
    projection = bool(cfg.get("reparameterize", False))
    out = {"num_virtual_tokens": int(spec["num_virtual_tokens"]), "num_layers": int(spec["num_layers"]),
           "token_dim": kv_width, "num_attention_heads": int(spec["num_kv_heads"]), "prefix_projection": projection}
    if projection:
        out["encoder_hidden_size"] = int(cfg.get("encoder_hidden_size") or kv_width)
    return out


register(PrefixEncoder)

__all__ = ["METHOD", "PrefixConfig", "Geometry", "PrefixKV", "PrefixEncoder", "activations_kv", "model_geometry",
           "build_prefix_encoder", "prefix_encoder_from_spec", "peft_config_kwargs"]
