"""What a training run is asked to do: :class:`TrainConfig`, its checks, and the defaults it falls back on.

Every field is checked when the config is made (a count must be a whole number, a rate a finite number,
each in its range), so a bad value fails with one line naming the field and a valid example before any
model is touched. The trainer (:mod:`ptuning_lab.trainer`) re-exports these names.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

# Peak learning rate per encoder method when TrainConfig.lr is None. Measured on SmolLM2-135M,
# 'capital', 40 steps, hybrid template: the LSTM encoder at 3e-3 collapsed to dev P@1 0 in one of
# two seeds (loss back above 10 after step 10); at 1e-3 both seeds trained (test P@1 0.59, 0.53).
DEFAULT_LR = {"lstm": 1e-3}
FALLBACK_LR = 3e-3


# What the training loss reads of the answer (TrainConfig.answer_loss; ptuning_lab.answer_loss). 'first'
# (the LAMA objective the paper trains) stays the default: it is what P@1 measures, it costs one
# next-token distribution per example (no answer tokens in the forward), and 'full' showed no gain beyond
# seed noise on four relations with multi-token answers (SmolLM2-135M, 60 steps, 3 seeds: exact match
# within about one std either way): docs/answer_loss.md, benchmarks/answer_loss.py.
ANSWER_LOSSES = ("first", "full", "labels")


def default_lr(method: str) -> float:
    """The learning rate a ``method`` ('mlp', 'lstm', 'direct', 'prefix') trains with by default."""
    return DEFAULT_LR.get(method, FALLBACK_LR)


@dataclass
class TrainConfig:
    lr: float | None = field(default=None, metadata={"help": "AdamW learning rate (peak, after warm-up); None: the encoder's default (1e-3 for lstm, 3e-3 otherwise)."})
    batch_size: int = field(default=16, metadata={"help": "Examples per step."})
    num_epochs: int = field(default=10, metadata={"help": "Passes over the train split (ignored if max_steps)."})
    max_steps: int | None = field(default=None, metadata={"help": "Stop after this many steps."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Fraction of steps with linear warm-up; then linear decay to 0."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    grad_clip: float | None = field(default=1.0, metadata={"help": "Clip the gradient norm (None: off)."})
    eval_every: int = field(default=20, metadata={"help": "Score the dev split every k steps (and at the end)."})
    snapshot_every: int = field(default=5, metadata={"help": "Keep a copy of the prompt every k steps (trajectories)."})
    patience: int | None = field(default=None, metadata={"help": "Stop after this many evaluations without a better dev score."})
    checkpoint_every: int | None = field(default=None, metadata={"help": "Write a resumable state every k steps (needs out_dir)."})
    seed: int = field(default=0, metadata={"help": "Seed for the data order and dropout."})
    waywardness_gamma: float = field(default=0.0, metadata={"help": "Weight of the waywardness regulariser (mean squared L2 to the target text's embeddings)."})
    waywardness_target: str | None = field(default=None, metadata={"help": "Text whose embeddings the prompt is pulled towards."})
    fast: bool = field(default=True, metadata={"help": "Use the exact fast path (ptuning_lab.fast: cached prefixes, shared head, packed rows; its settings: Trainer(fast=FastConfig(...))); False = the plain reference path."})
    answer_loss: str = field(default="first", metadata={"help": "'first': cross-entropy of the answer's first token (LAMA); 'full': negative log-likelihood of every answer token (summed per answer); 'labels' (classification, multiple choice): cross-entropy over the label or choice scores, as PET. See ANSWER_LOSSES."})

    def __post_init__(self):
        _check_types(self)
        checks = {"lr": FALLBACK_LR if self.lr is None else self.lr, "batch_size": self.batch_size, "num_epochs": self.num_epochs,
                  "eval_every": self.eval_every, "snapshot_every": self.snapshot_every}
        for name, value in checks.items():
            if not (value > 0) or (isinstance(value, float) and not math.isfinite(value)):
                example = FALLBACK_LR if name == "lr" else TrainConfig.__dataclass_fields__[name].default
                raise TrainConfigError(f"{name} must be > 0 (got {value}); for example {name}={example}.")
        for name in ("max_steps", "patience", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise TrainConfigError(f"{name} must be a positive integer or None (got {value}).")
        if not 0 <= self.warmup_ratio < 1:
            raise TrainConfigError(f"warmup_ratio must be in [0, 1) (got {self.warmup_ratio}).")
        if self.weight_decay < 0 or (self.grad_clip is not None and not self.grad_clip > 0):
            raise TrainConfigError(f"weight_decay must be >= 0 and grad_clip > 0 or None (got {self.weight_decay}, "
                                   f"{self.grad_clip}).")
        if self.waywardness_gamma < 0:
            raise TrainConfigError(f"waywardness_gamma must be >= 0 (got {self.waywardness_gamma}).")
        if self.answer_loss not in ANSWER_LOSSES:
            raise TrainConfigError(f"answer_loss={self.answer_loss!r}: use one of {', '.join(ANSWER_LOSSES)}.")
        if self.waywardness_gamma > 0 and not self.waywardness_target:
            raise TrainConfigError("waywardness_gamma > 0 needs waywardness_target: the text the prompt should stay close to.")


class TrainConfigError(ValueError):
    """A TrainConfig field has the wrong type or value; the message names the field and a valid example."""


_INTS = ("batch_size", "num_epochs", "max_steps", "eval_every", "snapshot_every", "patience", "checkpoint_every", "seed")
_FLOATS = ("lr", "warmup_ratio", "weight_decay", "grad_clip", "waywardness_gamma")


def _check_types(config: "TrainConfig") -> None:
    """Whole numbers where counts go, finite real numbers elsewhere: 2.5 steps, True or '0.1' are refused."""
    for name in _INTS + _FLOATS:
        value = getattr(config, name)
        default = TrainConfig.__dataclass_fields__[name].default
        if value is None and (default is None or name == "grad_clip"):
            continue
        example = f"{name}={default if default is not None else (FALLBACK_LR if name == 'lr' else 10)}"
        if name in _INTS:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TrainConfigError(f"{name} must be a whole number, got {value!r} ({type(value).__name__}); "
                                       f"e.g. {example}.")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TrainConfigError(f"{name} must be a finite number, got {value!r} ({type(value).__name__}); "
                                   f"e.g. {example}.")
    for name in ("fast",):
        if not isinstance(getattr(config, name), bool):
            raise TrainConfigError(f"{name} must be True or False, got {getattr(config, name)!r}.")
    if config.waywardness_target is not None and not isinstance(config.waywardness_target, str):
        raise TrainConfigError(f"waywardness_target must be a text, got {type(config.waywardness_target).__name__}.")
