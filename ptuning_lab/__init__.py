"""ptuning_lab: P-tuning ("GPT Understands, Too") as a course and a research lab.

    >>> import ptuning_lab as pl
    >>> lm = pl.FrozenLM.load()                      # GPT-2 where reachable, else the embedded SmolLM2
    >>> task = pl.load_task("capital")
    >>> enc = pl.build_encoder("mlp", 6, lm.embedding.detach(), init="text:The capital of", tokenize=lm.tokenize)
    >>> result = pl.Trainer(lm, enc, task, "[P]*3 The capital of [X] is [P]*3").fit()
"""
from .checkpoint import CheckpointError, Run, load_run
from .prompts import (METHODS, DirectConfig, EncoderError, LSTMConfig, MLPConfig, PrefixConfig, PrefixEncoder,
                      PrefixKV, PromptEncoder, build_encoder, build_prefix_encoder, prefix_norms)
from .evaluation import evaluate
from .experiments import (CompareResult, RunResult, baseline, compare, default_init, default_template, majority,
                          summarize, train_one)
from .frozen_lm import Batch, FrozenLM, readable_token
from .manifold import (VocabProjection, decoded_f1, drift_metrics, drift_over_training, fit_projection,
                       metric_agreement, nearest_tokens, snap_report, snap_to_vocab, vocab_stats, waywardness_penalty)
from .peft_interop import ImportedPrompt, PeftExportError, PeftImportError, export_peft, import_peft, save_imported
from .models import EMBEDDED_NAME, ModelLoadError, load_model
from .tasks import TASK_NAMES, Example, Task, TaskError, load_task
from .templates import Template, TemplateError
from .trainer import Callback, TrainConfig, Trainer, TrainResult

from ._version import __version__


def __getattr__(name):
    # pl.encoders and pl.prefix (compatibility modules re-exporting ptuning_lab.prompts) load on first use
    if name in ("encoders", "prefix"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "Batch", "Callback", "CheckpointError", "DirectConfig", "EMBEDDED_NAME", "EncoderError", "Example",
    "FrozenLM", "LSTMConfig", "METHODS", "MLPConfig", "ModelLoadError", "PromptEncoder", "Run", "TASK_NAMES",
    "Task", "TaskError", "Template", "TemplateError", "TrainConfig", "TrainResult", "Trainer", "build_encoder",
    "evaluate", "load_model", "load_run", "load_task", "readable_token",
    "VocabProjection", "decoded_f1", "drift_metrics", "drift_over_training", "fit_projection", "metric_agreement",
    "nearest_tokens", "snap_report", "snap_to_vocab", "vocab_stats", "waywardness_penalty",
    "PrefixConfig", "PrefixEncoder", "PrefixKV", "build_prefix_encoder", "prefix_norms",
    "ImportedPrompt", "PeftExportError", "PeftImportError", "export_peft", "import_peft", "save_imported",
    "CompareResult", "RunResult", "baseline", "compare", "default_init", "default_template", "majority", "summarize",
    "train_one",
]
