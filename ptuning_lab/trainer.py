"""The trainer: optimise a prompt encoder so the frozen LM answers the task after the template.

One step: ``prompt = encoder()`` (n, d) -> spliced into every templated input of the batch ->
next-token logits at the prediction position -> cross-entropy against the answer's first token
(LAMA style) -> AdamW on the encoder's parameters only. Every ``eval_every`` steps the dev split is
scored; the best encoder state (the task's first metric on dev -- P@1 for a relation, accuracy for
CB, F1a for MultiRC -- then dev loss) is restored at the end.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from . import distributed, resume, step_graphs, step_queue
from .answer_loss import check_answer_loss, full_answer_loss, label_loss
from .evaluation import LabelScoring, first_token_ids, warn_shared_first_tokens
from .fast import FastConfig, FastForward
from .forward import make_forward
from .frozen_lm import to_device
from .manifold import waywardness_penalty
from .prompts import initial_prompt
from .templates import Template, warn_unused_fields
from .train_config import (ANSWER_LOSSES, DEFAULT_LR, FALLBACK_LR, TrainConfig,  # noqa: F401 (re-exported)
                           TrainConfigError, default_lr)


def selection_metric(task, dev: dict) -> str:
    """The dev metric that picks the best state: the task's first metric when dev reports it, else P@1."""
    name = (tuple(getattr(task, "metrics", ()) or ()) or ("p_at_1",))[0]
    return name if name in dev else "p_at_1"

@dataclass
class TrainResult:
    """What a training run produced. ``prompt``: (n, d); ``snapshots``: (S, n, d) at ``snapshot_steps``."""

    encoder: torch.nn.Module
    prompt: torch.Tensor
    history: dict
    snapshot_steps: list[int]
    snapshots: torch.Tensor
    best_step: int
    best_dev: dict
    stopped: str            # "finished" | "early_stopping" | "interrupted" | "non_finite_loss"
    seconds: float


class Callback:
    """Hooks the trainer calls; override what you need (e.g. live plots in a notebook)."""

    def on_step_end(self, trainer: "Trainer", step: int, loss: float) -> None: ...
    def on_eval(self, trainer: "Trainer", record: dict) -> None: ...
    def on_snapshot(self, trainer: "Trainer", step: int, prompt: torch.Tensor) -> None: ...
    def on_train_end(self, trainer: "Trainer", result: TrainResult) -> None: ...


class Trainer:
    """Train ``encoder`` on ``task`` with ``template`` (which must contain [X] and at least one [P]).

    ``fast``: the fast path's settings (:class:`ptuning_lab.fast.FastConfig`), used when
    ``config.fast`` is on (the default); ``self.forward`` is the path every step and evaluation runs.
    ``scoring``: how label words are scored (:class:`ptuning_lab.evaluation.LabelScoring`) in the
    dev metrics and in ``answer_loss="labels"``. On a GPU each training step is recorded as a CUDA
    graph and replayed (``self.step_graphs``, :mod:`ptuning_lab.step_graphs`; its ``stats`` count the
    replays, its ``reason`` says why a step ran uncaptured); ``FastConfig(cuda_graphs=False)`` turns it off.
    """

    def __init__(self, lm, encoder, task, template: "str | Template", config: TrainConfig | None = None,
                 callbacks=(), out_dir=None, run_config: dict | None = None, progress: bool = True,
                 fast: FastConfig | None = None, scoring: LabelScoring | None = None):
        _check_arguments(lm, encoder, task, config)
        self.lm, self.encoder, self.task = lm, encoder.to(lm.device), task
        # input-layer encoders fill the template's [P] slots; others (e.g. K/V prefixes) need none
        slots = encoder.uses_template_slots
        self.template = Template.parse(template).validate(need_virtual=slots)
        if slots and self.template.num_virtual_tokens != encoder.num_virtual_tokens:
            raise ValueError(f"the template has {self.template.num_virtual_tokens} [P] slots but the encoder makes "
                             f"{encoder.num_virtual_tokens} virtual tokens; make them equal.")
        if not slots and self.template.num_virtual_tokens:
            raise ValueError(f"the template {self.template.text!r} has [P] slots, but a '{encoder.method}' encoder puts its "
                             f"virtual tokens elsewhere (every layer's keys/values); remove the [P]s from the template.")
        if encoder.num_virtual_tokens >= lm.max_positions:
            raise ValueError(f"{encoder.num_virtual_tokens} virtual tokens do not fit the model's context of "
                             f"{lm.max_positions} positions; use far fewer (3-20 is typical).")
        if not task.train or not task.dev:
            raise ValueError(f"task '{task.name}' has an empty train or dev split "
                             f"({len(task.train)} train, {len(task.dev)} dev); use a larger task.")
        warn_unused_fields(self.template, task.examples, task.name)
        self.config = config or TrainConfig()
        if fast is not None and not self.config.fast:
            raise ValueError("fast=FastConfig(...) was given but TrainConfig(fast=False) asks for the plain path; "
                             "drop one of them.")
        if self.config.lr is None:
            self.config = dataclasses.replace(self.config, lr=default_lr(encoder.method))
        if self.config.waywardness_gamma and not slots:
            raise ValueError(f"waywardness compares input-layer prompts with word embeddings; a '{encoder.method}' "
                             f"encoder has no input-layer prompt. Set waywardness_gamma=0.")
        self.callbacks = list(callbacks)
        self.dist = distributed.context()      # a single process unless started by `accelerate launch`
        self.dist.prepare_frozen_model(lm)     # an FSDP launch: the frozen model is sharded across the ranks
        self.dist.broadcast_parameters(self.encoder)       # under a launch: every rank starts from rank 0's weights
        self.out_dir = Path(out_dir) if out_dir else None
        self.run_config = run_config or {}
        self.progress = progress
        self.steps_per_epoch = math.ceil(len(task.train) / self.config.batch_size)
        self.total_steps = self.config.max_steps or self.config.num_epochs * self.steps_per_epoch
        self.optimizer = _adamw(encoder.parameters(), self.config.lr, self.config.weight_decay)
        warmup = int(self.config.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: _linear_warmup(s, warmup, self.total_steps))
        self.gold = dict(zip([ex.target for ex in task.train], first_token_ids(lm, [ex.target for ex in task.train]).tolist()))
        self._answer_memo: dict[str, list[int]] = {}
        self.scoring = scoring or LabelScoring()
        check_answer_loss(self.config.answer_loss, task)
        if task.verbalizer:
            warn_shared_first_tokens(lm, task.verbalizer)     # first-token P@1 cannot tell such labels apart
        self.wayward_target = self._wayward_target()
        # the fast path: same logits as the plain path, less of the frozen model's work
        self.forward = make_forward(lm, self.template, fast if fast is not None else self.config.fast,
                                    produces=encoder.produces)
        # mutable training state (everything an exact resume needs)
        self.step = 0
        self.history: dict = {"train": [], "eval": []}
        self.snapshot_steps: list[int] = []
        self.snapshot_list: list[torch.Tensor] = []
        self.best_state = copy.deepcopy(encoder.state_dict())
        self.best_step, self.best_key, self.best_dev, self.bad_evals = 0, (-1.0, 0.0), {}, 0
        # read each loss one step late, so the GPU never waits for the host (ptuning_lab.step_queue)
        self.overlap_steps = lm.device.type == "cuda"
        # on a GPU, whole steps recorded as CUDA graphs and replayed (ptuning_lab.step_graphs)
        self.step_graphs = step_graphs.for_trainer(self)

    # ---------------------------------------------------------------- one step
    def batch_examples(self, step: int) -> list:
        """The examples of ``step``: a seeded permutation per epoch, so a resumed run sees the same batches."""
        epoch, i = divmod(step, self.steps_per_epoch)
        g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.task.train), generator=g).tolist()
        bs = self.config.batch_size
        return [self.task.train[j] for j in order[i * bs:(i + 1) * bs]]

    def loss(self, examples) -> torch.Tensor:
        """The answer loss of ``config.answer_loss`` averaged over ``examples`` (+ waywardness).

        'first': cross-entropy of each answer's first token over the whole vocabulary; 'full': the
        negative log-likelihood of all the answer's tokens (teacher forcing), summed per answer;
        'labels': cross-entropy over the label (or choice) scores (:mod:`ptuning_lab.answer_loss`).
        """
        prompt = self.encoder()
        inputs = list(examples)                    # each template slot reads its field of the example
        how = self.config.answer_loss
        if how == "first":
            # the answers go to the device first, without blocking: a blocking copy after the forward
            # would make the host wait for the whole forward before it could queue the backward
            gold = to_device(torch.tensor([self.gold[ex.target] for ex in examples]), self.lm.device)
            loss = F.cross_entropy(self.forward.last_logits(inputs, prompt), gold)
        elif how == "full":
            loss = full_answer_loss(self.forward, inputs, [self._answer_ids(ex.target) for ex in examples], prompt)
        else:
            loss = label_loss(self.forward, self.lm, examples, prompt, self.task.verbalizer, self.scoring,
                              self._answer_ids)
        return self.regularised(loss, prompt)

    def regularised(self, loss: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        """``loss`` plus the waywardness penalty when ``config.waywardness_gamma`` asks for one."""
        if self.wayward_target is not None:
            loss = loss + self.config.waywardness_gamma * waywardness_penalty(prompt, self.wayward_target)
        return loss

    def _answer_ids(self, text: str) -> list[int]:
        ids = self._answer_memo.get(text)
        if ids is None:
            ids = self._answer_memo[text] = self.lm.answer_ids(text)
        return ids

    def train_step(self, examples) -> float:
        """One step on ``examples``, its loss read at once; a non-finite loss raises ``FloatingPointError``
        and leaves the encoder, the optimizer and the schedule as they were (:mod:`ptuning_lab.step_queue`)."""
        if self.dist.world_size == 1 and step_queue.fused(self):
            return step_queue.settle(self, step_queue.queue(self, examples, self.step))
        self.encoder.train()
        self.lm.begin_step()
        if self.dist.world_size > 1:       # this rank's shard; gradients summed over ranks = the global-batch step
            try:
                loss = self.dist.backward_shard(self.loss, self.encoder, examples)
            except FloatingPointError as err:
                raise FloatingPointError(f"{err} at step {self.step}") from None
        else:
            loss = self.loss(examples)
            loss.backward()
        self.optimizer.__dict__.pop("found_inf", None)     # an unfused step refuses one
        value = loss.item()
        if not math.isfinite(value):
            self.optimizer.zero_grad(set_to_none=True)           # the encoder is left as it was
            raise FloatingPointError(f"the training loss became {value} at step {self.step}")
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.encoder.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return value

    def train_steps(self, n: int) -> list[float]:
        """``n`` steps from ``self.step`` (which advances), as :meth:`fit` runs them between evaluations:
        on a GPU each loss is read one step late, so the device never waits for the host
        (:mod:`ptuning_lab.step_queue`). Returns their losses; a non-finite one raises ``FloatingPointError``
        with the trainer as it was before that step."""
        losses: list[float] = []
        step_queue.run(self, n, lambda loss, lr: losses.append(loss))
        return losses

    @torch.no_grad()
    def current_prompt(self) -> torch.Tensor:
        """The prompt (n, d) the encoder makes now, in eval mode (no dropout)."""
        was = self.encoder.training
        self.encoder.eval()
        # direct and prefix-table encoders return views of their own weights: snapshots must not alias them
        prompt = self.encoder().detach().clone()
        self.encoder.train(was)
        return prompt

    # ---------------------------------------------------------------- the loop
    def fit(self, resume: bool = False) -> TrainResult:
        if resume:
            self.load_state()
        else:
            torch.manual_seed(self.config.seed)
            self._snapshot()
        start, stopped, losses = time.perf_counter(), "finished", []
        bar = tqdm(total=self.total_steps, initial=self.step, desc=f"{self.encoder.method}",
                   disable=not self.progress or not self.dist.is_main_process, leave=False)
        try:
            def record(loss: float, lr: float) -> None:
                losses.append(loss)
                self.history["train"].append({"step": self.step, "loss": loss, "lr": lr})
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}")
                for cb in self.callbacks:
                    cb.on_step_end(self, self.step, loss)

            while self.step < self.total_steps:
                # the steps up to the next evaluation / snapshot / checkpoint, queued ahead on a GPU
                step_queue.run(self, self._steps_to_boundary(), record)
                if self.step % self.config.snapshot_every == 0:
                    self._snapshot()
                if self.step % self.config.eval_every == 0 or self.step == self.total_steps:
                    if self._evaluate(losses):
                        stopped = "early_stopping"
                        break
                    losses = []
                if self.config.checkpoint_every and self.out_dir and self.step % self.config.checkpoint_every == 0:
                    self.save_state()
        except KeyboardInterrupt:
            stopped = "interrupted"
            warnings.warn(f"training interrupted at step {self.step}: keeping the best state so far "
                          f"(step {self.best_step}) and the history.")
        except FloatingPointError as err:
            stopped = "non_finite_loss"
            warnings.warn(f"{err}; training stopped. The last good state and the history are kept. "
                          "Try a smaller learning rate (--lr) or gradient clipping.")
        finally:
            bar.close()
            if self.step_graphs is not None:       # the recorded steps' memory goes back to the allocator now
                self.step_graphs.clear()
        self.encoder.load_state_dict(self.best_state)
        result = TrainResult(self.encoder, self.current_prompt().cpu(), self.history, list(self.snapshot_steps),
                             torch.stack(self.snapshot_list) if self.snapshot_list else torch.empty(0),
                             self.best_step, self.best_dev, stopped, time.perf_counter() - start)
        if self.out_dir:
            self.save(result)
        for cb in self.callbacks:
            cb.on_train_end(self, result)
        return result

    def _steps_to_boundary(self) -> int:
        """Steps from now to the next evaluation, snapshot, checkpoint or the end (at least 1)."""
        c = self.config
        every = [c.snapshot_every, c.eval_every] + ([c.checkpoint_every] if c.checkpoint_every and self.out_dir else [])
        return max(1, min([self.total_steps - self.step] + [e - self.step % e for e in every if e]))

    def _evaluate(self, losses) -> bool:
        """Score dev, keep the best state; True when early stopping should end training."""
        prompt = self.current_prompt()
        dev = self.dist.evaluate(lambda examples: self.score(examples, prompt, self.dev_metrics), self.task.dev)
        record = {"step": self.step, "epoch": self.step / self.steps_per_epoch,
                  "train_loss": sum(losses) / max(len(losses), 1), "dev_p_at_1": dev["p_at_1"], "dev_loss": dev["loss"]}
        chosen = selection_metric(self.task, dev)
        if chosen != "p_at_1":
            record[f"dev_{chosen}"] = dev[chosen]
        self.history["eval"].append(record)
        # the task's own metric picks the best state (accuracy for CB, F1a for MultiRC, P@1 for relations)
        key = (dev[chosen], -dev["loss"])
        if key > self.best_key:
            self.best_key, self.best_step, self.best_dev, self.bad_evals = key, self.step, dev, 0
            self.best_state = copy.deepcopy(self.encoder.state_dict())
        else:
            self.bad_evals += 1
        for cb in self.callbacks:
            cb.on_eval(self, record)
        return bool(self.config.patience and self.bad_evals >= self.config.patience)

    def score(self, examples, prompt=None, metrics=None) -> dict:
        """``evaluate``'s metrics of ``examples`` on the trainer's path, with ``prompt`` (default: the current
        one); ``metrics`` default: the task's."""
        prompt = self.current_prompt() if prompt is None else prompt
        self.lm.begin_step()
        return self.forward.evaluate(examples, prompt, verbalizer=self.task.verbalizer,
                                     metrics=metrics or self.task.metrics, scoring=self.scoring,
                                     keep_predictions=self.dist.world_size > 1)

    @property
    def dev_metrics(self) -> tuple[str, ...]:
        """What each evaluation during training computes: the task's metrics but exact match, a second
        pass over every answer token, unless it is the one that picks the best state (the test split,
        scored after training, still reports it)."""
        metrics = tuple(self.task.metrics or ())
        return tuple(m for m in metrics if m != "exact_match" or m == metrics[0])

    @property
    def fast(self) -> FastForward | None:
        """The fast path when it was chosen, else None (``self.forward`` is the path either way)."""
        return self.forward if isinstance(self.forward, FastForward) else None

    def _snapshot(self) -> None:
        prompt = self.current_prompt().cpu()
        self.snapshot_steps.append(self.step)
        self.snapshot_list.append(self.encoder.stored(prompt))
        for cb in self.callbacks:
            cb.on_snapshot(self, self.step, prompt)

    def _wayward_target(self):
        if not self.config.waywardness_gamma:
            return None
        return initial_prompt(f"text:{self.config.waywardness_target}", self.encoder.num_virtual_tokens,
                              self.lm.embedding.detach(), self.lm.tokenize).to(self.lm.device)

    # ---------------------------------------------------------------- saving and resuming
    def full_config(self) -> dict:
        """What config.json records: every setting that changes the result (a resume compares them all)."""
        return {**self.run_config, "model": self.lm.name, "template": self.template.text,
                "vocab_size": self.lm.vocab_size, "hidden_size": self.lm.hidden_size,
                "encoder": self.encoder.spec(), "train": asdict(self.config),
                "task": self.run_config.get("task", self.task.name), "task_data": resume.task_fingerprint(self.task)}

    def save(self, result: TrainResult) -> None:
        """Write the run directory (best prompt, encoder weights, history, snapshots); main process only."""
        if not self.dist.is_main_process:
            return
        history = {**result.history, "best_step": result.best_step, "stopped": result.stopped}
        ckpt.save_run(self.out_dir, config=self.full_config(), encoder_state=self.encoder.state_dict(),
                      prompt=self.encoder.stored(result.prompt), history=history, snapshot_steps=result.snapshot_steps,
                      snapshots=result.snapshots if len(result.snapshot_steps) else None)

    def save_state(self) -> None:
        """Write everything an exact resume needs as one checkpoint, ``out_dir/state/step-NNNNNN/``; main process only."""
        if not self.dist.is_main_process:
            return
        tensors, opt_meta = ckpt.optimizer_to_tensors(self.optimizer.state_dict())
        tensors.update({f"current.{k}": v for k, v in self.encoder.state_dict().items()})
        tensors.update({f"best.{k}": v for k, v in self.best_state.items()})
        tensors["rng"] = torch.get_rng_state()
        tensors["snapshots"] = torch.stack(self.snapshot_list)
        meta = {"step": self.step, "history": self.history, "snapshot_steps": self.snapshot_steps,
                "best_step": self.best_step, "best_key": list(self.best_key), "best_dev": self.best_dev,
                "bad_evals": self.bad_evals, "scheduler": self.scheduler.state_dict(), "optimizer": opt_meta,
                "config": self.full_config()}
        resume.save_checkpoint(self.out_dir, self.step, tensors, meta)

    def load_state(self) -> None:
        """Restore the newest verified checkpoint of ``out_dir`` (see :func:`ptuning_lab.checkpoint.load_checkpoint`).

        Refuses (CheckpointError) when any setting that changes the result differs from the saved run's.
        """
        if not self.out_dir:
            raise ckpt.CheckpointError("nothing to resume: this Trainer has no out_dir. Pass out_dir= (CLI: --out) "
                                       "of a run trained with checkpoint_every.")
        check = partial(resume.check_trainer_state, total_steps=self.total_steps, encoder_keys=self.encoder.state_dict())
        tensors, meta, _ = resume.load_checkpoint(self.out_dir, check=check)
        differences = resume.config_differences(meta["config"], self.full_config())
        if differences:
            raise ckpt.CheckpointError(f"cannot resume: {'; '.join(differences)}; use the same settings or start a "
                                       "new run with another --out")
        self.encoder.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("current.")})
        self.best_state = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        self.optimizer.load_state_dict(ckpt.optimizer_from_tensors(tensors, meta["optimizer"]))
        self.scheduler.load_state_dict(meta["scheduler"])
        torch.set_rng_state(tensors["rng"])
        self.step, self.history, self.snapshot_steps = meta["step"], meta["history"], meta["snapshot_steps"]
        self.snapshot_list = list(tensors["snapshots"].unbind(0))
        self.best_step, self.best_key = meta["best_step"], tuple(meta["best_key"])
        self.best_dev, self.bad_evals = meta["best_dev"], meta["bad_evals"]

def _check_arguments(lm, encoder, task, config) -> None:
    """The public API checks its arguments like the CLI does (a name where an object is needed, ...)."""
    if isinstance(task, (str, os.PathLike)):
        raise TrainerArgumentError(f"task must be a Task, got the {type(task).__name__} {str(task)!r}; pass "
                         f"load_task({str(task)!r}) (from ptuning_lab.tasks import load_task).")
    if not all(hasattr(task, a) for a in ("name", "template", "train", "dev", "test", "answers")):
        raise TrainerArgumentError(f"task must be a Task (load_task('capital')), got {type(task).__name__}.")
    if isinstance(lm, (str, os.PathLike)):
        raise TrainerArgumentError(f"lm must be a FrozenLM, got the {type(lm).__name__} {str(lm)!r}; pass "
                         f"FrozenLM.load({str(lm)!r}).")
    if not hasattr(lm, "embedding") or not isinstance(encoder, torch.nn.Module) or not hasattr(encoder, "spec"):
        raise TrainerArgumentError(f"Trainer(lm, encoder, ...) needs a FrozenLM and a prompt encoder (build_encoder(...)), got "
                         f"{type(lm).__name__} and {type(encoder).__name__}.")
    if config is not None and not isinstance(config, TrainConfig):
        raise TrainerArgumentError(f"config must be a TrainConfig, got {type(config).__name__}; e.g. "
                         "TrainConfig(max_steps=40) (a dict: TrainConfig(**d)).")


class TrainerArgumentError(ValueError):
    """A Trainer argument of the wrong kind (a name where an object is needed); the message says what to pass."""


def _adamw(params, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW, fused (one kernel for all parameters, found_inf honoured) where this torch has it for them."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):          # no fused kernel for this device or parameter dtype
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _linear_warmup(step: int, warmup: int, total: int) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))
