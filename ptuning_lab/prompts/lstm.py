"""The original P-tuning encoder (Liu et al. 2021): a bidirectional LSTM and an MLP head, so every
virtual token sees its neighbours: ``prompt = x + mlp_head(BiLSTM(x))``.

Residual form as for ``mlp`` (the head's last layer zero-initialised: the prompt starts at the init).
PEFT's LSTM (``encoder_hidden_size=h``, ``encoder_num_layers=L``, ``encoder_dropout=p``) is
``LSTM(d, h per direction, L layers, bidirectional)`` then ``Linear(2h,2h) ReLU Linear(2h,d)``:
ours with ``LSTMConfig(encoder_hidden_size=h, num_layers=L, dropout=p, residual=False)``, names
included. The one difference: our dropout also acts on the last LSTM layer's output (PEFT's only
between layers, so with one layer it silently does nothing). Identical when ``p == 0`` or in eval mode.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .base import PromptEncoder, check_dropout, check_positive_int, register, seeded_linear, seeded_uniform_


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
            check_positive_int(self.encoder_hidden_size, "encoder_hidden_size",
                               "use e.g. d // 2 (per direction), or None for it.")
        check_positive_int(self.num_layers, "num_layers", "use 2 (the default) or more.")
        check_dropout(self.dropout)


def _lstm(d_in: int, hidden: int, num_layers: int, dropout: float, gen, device) -> nn.LSTM:
    # torch's LSTM dropout acts between layers only; the last layer's output gets ours in forward()
    lstm = nn.LSTM(d_in, hidden, num_layers=num_layers, dropout=dropout if num_layers > 1 else 0.0,
                   bidirectional=True, batch_first=True, device="meta").to_empty(device=device)
    seeded_uniform_(lstm.parameters(), 1.0 / math.sqrt(hidden), gen)
    return lstm


class LSTMPromptEncoder(PromptEncoder):
    """``x (n, d) -> x + mlp_head(BiLSTM(x))`` (or without ``x +``); see ``LSTMConfig``."""

    method = "lstm"
    config_class = LSTMConfig

    def __init__(self, start, config: LSTMConfig, init, seed):
        super().__init__(start, config, init, seed)
        d, h = self.hidden_size, config.encoder_hidden_size
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        self.lstm_head = _lstm(d, h, config.num_layers, config.dropout, gen, start.device)
        self.mlp_head = nn.Sequential(
            seeded_linear(2 * h, 2 * h, gen, start.device),
            nn.ReLU(),
            seeded_linear(2 * h, d, gen, start.device, zero=config.residual),
        )

    @classmethod
    def resolve_config(cls, config: LSTMConfig, d: int) -> LSTMConfig:
        """``encoder_hidden_size=None`` -> ``d // 2`` per direction (Liu et al.'s size)."""
        if config.encoder_hidden_size is None:
            return dataclasses.replace(config, encoder_hidden_size=max(1, d // 2))
        return config

    def forward(self) -> torch.Tensor:
        x = self.embedding.weight                                            # (n, d)
        states = self.lstm_head(x.unsqueeze(0))[0]                           # (1, n, 2h)
        states = F.dropout(states, self.config.dropout, self.training)
        out = self.mlp_head(states).squeeze(0)                               # (n, d)
        return x + out if self.config.residual else out


register(LSTMPromptEncoder)
