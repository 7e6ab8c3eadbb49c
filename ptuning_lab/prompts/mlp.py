"""P-tuning with an MLP reparameterisation (Liu et al. 2021): ``prompt = x + f(x)``.

Residual form (``residual=True``, the default): ``x (n, d)`` is initialised by the init string and
the *last* layer of ``f`` is zero-initialised, so the initial prompt equals ``initial_prompt(init,
...)`` exactly. With ``residual=False`` you get the PEFT form ``prompt = f(x)`` (all layers with
PyTorch's default initialisation), whose initial prompt is *not* the init target.

PEFT's MLP (``encoder_reparameterization_type="MLP"``, ``encoder_hidden_size=h``) is
``Linear(d,h) ReLU Linear(h,h) ReLU Linear(h,d)``, no residual, and it ignores
``encoder_num_layers`` and ``encoder_dropout``: ours with ``MLPConfig(encoder_hidden_size=h,
num_layers=3, dropout=0.0, residual=False)``, parameter names included, so a PEFT state dict loads 1:1.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from .base import EncoderError, PromptEncoder, check_dropout, check_positive_int, register, seeded_linear


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
            check_positive_int(self.encoder_hidden_size, "encoder_hidden_size",
                               "use e.g. the model width, or None for it.")
        check_positive_int(self.num_layers, "num_layers", "use 2 (the default) or more.")
        check_dropout(self.dropout)
        if self.num_layers == 1 and self.dropout > 0:
            raise EncoderError(f"dropout = {self.dropout} with num_layers = 1: a one-layer MLP has no "
                               f"hidden activations for dropout to act on; use num_layers >= 2 or dropout=0.")


class MLPPromptEncoder(PromptEncoder):
    """``x (n, d) -> x + mlp_head(x)`` (or ``mlp_head(x)``); see ``MLPConfig`` for the layers."""

    method = "mlp"
    config_class = MLPConfig

    def __init__(self, start, config: MLPConfig, init, seed):
        super().__init__(start, config, init, seed)
        d, h, L = self.hidden_size, config.encoder_hidden_size, config.num_layers
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        dims = [d] + [h] * (L - 1) + [d]
        layers: list[nn.Module] = []
        for i in range(L):
            last = i == L - 1
            layers.append(seeded_linear(dims[i], dims[i + 1], gen, start.device, zero=last and config.residual))
            if not last:
                layers.append(nn.ReLU())
                # no Dropout module when p == 0 keeps the layer indices (state-dict keys) equal to PEFT's
                if config.dropout > 0:
                    layers.append(nn.Dropout(config.dropout))
        self.mlp_head = nn.Sequential(*layers)

    @classmethod
    def resolve_config(cls, config: MLPConfig, d: int) -> MLPConfig:
        """``encoder_hidden_size=None`` -> the model width ``d``."""
        return dataclasses.replace(config, encoder_hidden_size=d) if config.encoder_hidden_size is None else config

    def forward(self) -> torch.Tensor:
        x = self.embedding.weight                                            # (n, d)
        out = self.mlp_head(x)                                               # (n, d)
        return x + out if self.config.residual else out


register(MLPPromptEncoder)
