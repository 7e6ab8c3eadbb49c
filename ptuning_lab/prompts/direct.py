"""Prompt tuning (Lester et al. 2021): the ``(n, d)`` prompt is the parameter.

PEFT's ``PromptEmbedding`` is this method: one ``embedding.weight (n, d)``, the same name.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import PromptEncoder, register


@dataclass
class DirectConfig:
    """Prompt tuning has no hyperparameters beyond ``num_virtual_tokens`` and ``init``."""


class DirectPromptEncoder(PromptEncoder):
    """Prompt tuning: ``forward() -> embedding.weight (n, d)``, the only parameter."""

    method = "direct"
    config_class = DirectConfig

    def forward(self) -> torch.Tensor:
        return self.embedding.weight


register(DirectPromptEncoder)
