"""Experiment tracking: a trainer callback that sends a run's curves and config to TensorBoard or W&B.

The writing is done by Accelerate's trackers (``accelerate.tracking.TensorBoardTracker`` and
``WandBTracker``); this module decides what is logged and when:

- every step: ``train/loss`` and ``train/lr`` (the values of ``history["train"]``);
- every evaluation: ``dev/p_at_1``, ``dev/loss``, ``train/mean_loss`` (since the last evaluation)
  and ``epoch`` (the values of ``history["eval"]``);
- at the end: ``final/best_dev_p_at_1``, ``final/best_dev_loss``, ``final/best_step``,
  ``final/steps``, ``final/train_seconds`` and ``final/stopped``, plus whatever
  :meth:`TrackingCallback.finish` is given (the CLI gives it the test metrics);
- once, before the first value: the run's config (model, template, encoder, every training
  option), flattened to ``"train/lr"``-style keys.

    from ptuning_lab import tracking
    cb = tracking.callback_for("tensorboard", "runs/capital-mlp")     # None for "none"
    result = Trainer(lm, encoder, task, template, callbacks=[cb], out_dir="runs/capital-mlp").fit()
    cb.finish({"test_p_at_1": 0.61})                                   # metrics computed after training; closes

TensorBoard needs no network: the event files go to ``<out_dir>/tensorboard/`` (view them with
``tensorboard --logdir runs``). W&B runs offline unless ``WANDB_MODE`` says otherwise (``wandb sync``
uploads an offline run later); its files go to ``<out_dir>/wandb/``. Under ``accelerate launch``
only the main process logs.
"""
from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

from .suggest import did_you_mean
from .trainer import Callback

REPORT_TO = ("none", "tensorboard", "wandb")

# what each tracker needs, and the command that installs it
_NEEDS = {"tensorboard": ("torch.utils.tensorboard", 'pip install tensorboard (or pip install "ptuning_lab[track]")'),
          "wandb": ("wandb", "pip install wandb")}


class TrackingError(ValueError):
    """A tracker that cannot start: an unknown name, a missing package, or no run directory."""


def check_report_to(report_to: str) -> str:
    """``report_to`` if it names a tracker whose package is installed; else a :class:`TrackingError` saying why."""
    if report_to not in REPORT_TO:
        raise TrackingError(f"unknown tracker {report_to!r}; use one of {', '.join(REPORT_TO)}."
                            + did_you_mean(report_to, REPORT_TO))
    if report_to in _NEEDS:
        module, install = _NEEDS[report_to]
        try:
            importlib.import_module(module)
        except ImportError:
            raise TrackingError(f"--report-to {report_to} needs the '{report_to}' package, which is not installed: "
                                f"{install}. Or use --report-to none.") from None
    return report_to


def make_tracker(report_to: str, out_dir, run_name: str | None = None):
    """The Accelerate tracker for ``report_to`` ('tensorboard' or 'wandb'), writing under ``out_dir`` (not started)."""
    from accelerate.tracking import TensorBoardTracker, WandBTracker

    check_report_to(report_to)
    out_dir = Path(out_dir)
    if report_to == "tensorboard":
        tracker = TensorBoardTracker("tensorboard", out_dir)          # event files in out_dir/tensorboard/
    elif report_to == "wandb":
        # offline unless asked: a sweep on a laptop or a cluster node must not need an account or a network
        tracker = WandBTracker(os.environ.get("WANDB_PROJECT", "ptuning_lab"), name=run_name or out_dir.name,
                               dir=str(out_dir), mode=os.environ.get("WANDB_MODE", "offline"))
    else:
        raise TrackingError(f"report_to={report_to!r} logs nothing: there is no tracker to make.")
    # the callback asks the trainer which process is the main one; without this Accelerate would
    # start its own process state just to answer that question
    tracker.main_process_only = False
    return tracker


def flat_config(config: dict, prefix: str = "") -> dict:
    """A nested config as one level of ``"a/b"`` keys with bool/int/float/str values (what trackers accept).

    >>> flat_config({"train": {"lr": 0.003, "max_steps": None}, "template": "[P] [X]", "seeds": [0, 1]})
    {'train/lr': 0.003, 'train/max_steps': 'None', 'template': '[P] [X]', 'seeds': '[0, 1]'}
    """
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{name}/"))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        elif value is None:
            flat[name] = "None"
        else:
            flat[name] = json.dumps(value, default=str)
    return flat


class TrackingCallback(Callback):
    """Log a :class:`~ptuning_lab.trainer.Trainer`'s curves, final metrics and config to an Accelerate tracker.

    The tracker starts at the first hook the trainer calls (the trainer has no start hook) and stores
    the trainer's ``full_config()`` updated with ``run_config``. It stays open after training so
    that metrics computed afterwards (the test split) can join the run: call :meth:`finish`.
    """

    def __init__(self, tracker, run_config: dict | None = None):
        self.tracker = tracker
        self.run_config = dict(run_config or {})
        self.started = self.finished = False
        self.active = True           # False on the other processes of a launched run
        self.step = 0

    def _start(self, trainer) -> bool:
        if not self.started:
            self.started = True
            self.active = trainer.dist.is_main_process
            if self.active:
                # Accelerate's trackers write their debug lines through its logger, which refuses to
                # work before Accelerate's process state exists; a single process has none until
                # now (under a launch the Accelerator made it), and making one starts no process group
                from accelerate import PartialState

                PartialState()
                self.tracker.start()
                self.tracker.store_init_configuration(flat_config({**trainer.full_config(), **self.run_config}))
        return self.active and not self.finished

    def log(self, values: dict, step: int) -> None:
        """Send ``values`` (name -> number or text) at ``step``, on the main process of a started run only."""
        if self.started and self.active and not self.finished:
            self.tracker.log(values, step=step)

    def on_snapshot(self, trainer, step, prompt) -> None:
        self._start(trainer)

    def on_step_end(self, trainer, step, loss) -> None:
        if self._start(trainer):
            record = trainer.history["train"][-1]          # {step, loss, lr}: the values history.json keeps
            self.step = record["step"]
            self.log({"train/loss": record["loss"], "train/lr": record["lr"]}, step=record["step"])

    def on_eval(self, trainer, record) -> None:
        if self._start(trainer):
            self.log({"dev/p_at_1": record["dev_p_at_1"], "dev/loss": record["dev_loss"],
                      "train/mean_loss": record["train_loss"], "epoch": record["epoch"]}, step=record["step"])

    def on_train_end(self, trainer, result) -> None:
        if self._start(trainer):
            self.step = trainer.step
            final = {"best_step": result.best_step, "steps": trainer.step, "train_seconds": result.seconds,
                     "stopped": result.stopped}
            final.update({f"best_dev_{k}": v for k, v in result.best_dev.items() if isinstance(v, (int, float))})
            self.log({f"final/{k}": v for k, v in final.items()}, step=trainer.step)

    def finish(self, metrics: dict | None = None) -> None:
        """Log ``metrics``' numbers and texts as ``final/<name>`` (e.g. ``test_p_at_1``), then close the run."""
        if not self.started or not self.active or self.finished:
            self.finished = True
            return
        if metrics:
            values = {f"final/{k}": v for k, v in metrics.items()
                      if isinstance(v, (int, float, str)) and not k.startswith("_")}
            self.log(values, step=self.step)
        self.finished = True
        self.tracker.finish()


def callback_for(report_to: str, out_dir, run_config: dict | None = None) -> TrackingCallback | None:
    """The callback the CLI's ``--report-to`` adds to a training run, or None for ``"none"``.

    ``report_to``: 'none', 'tensorboard' or 'wandb'; ``out_dir``: the run directory (TensorBoard
    writes to ``out_dir/tensorboard/``); ``run_config``: extra config to store with the run. Raises
    :class:`TrackingError` (a ``ValueError``: the CLI prints ``error: ...``) before anything trains
    when the name is unknown or the tracker's package is missing.
    """
    if check_report_to(report_to) == "none":
        return None
    if out_dir is None:
        raise TrackingError(f"--report-to {report_to} needs a run directory (--out) to write to.")
    return TrackingCallback(make_tracker(report_to, out_dir), run_config)


def read_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    """The scalar curves of the TensorBoard event files in ``log_dir``: ``{tag: [(step, value), ...]}``.

    Values come back as TensorBoard stores them (float32). Needs the ``tensorboard`` package.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})      # 0: keep every point
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


__all__ = ["REPORT_TO", "TrackingCallback", "TrackingError", "callback_for", "check_report_to", "flat_config",
           "make_tracker", "read_scalars"]
