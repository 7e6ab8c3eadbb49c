"""Checkpoints and resume (issue 18, items 3-6): one verified unit per step, exact or refused, damage named.

Each test names the guarantee it protects; the crash-injection counterpart is tests/test_crash.py.
"""
import json
import os

import pytest
import torch

from ptuning_lab import checkpoint as ckpt
from ptuning_lab import resume
from ptuning_lab.cli import main
from ptuning_lab.tasks import Task
from test_trainer import make_trainer, toy_task


def checkpointed(gpt2, out, **cfg):
    """A finished run of 12 steps with a checkpoint every 3 steps (steps 3, 6, 9, 12)."""
    cfg = {"max_steps": 12, "checkpoint_every": 3, **cfg}
    return make_trainer(gpt2, out=out, **cfg).fit()


def steps_on_disk(out):
    return [step for step, _ in resume.checkpoint_dirs(out)]


def rewrite_manifest(directory):
    """Re-hash a checkpoint's files: a hand edit that also fixed the manifest, so the schema check is reached."""
    import hashlib

    manifest = json.loads((directory / "manifest.json").read_text())
    for name in manifest["files"]:
        blob = (directory / name).read_bytes()
        manifest["files"][name] = {"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    (directory / "manifest.json").write_text(json.dumps(manifest))


def flip_tensor_bytes(path, count=64):
    """Flip ``count`` bytes inside the tensor data (past the header) of a safetensors file."""
    blob = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(blob[:8], "little")
    for i in range(count):
        blob[start + i] ^= 0xFF
    path.write_bytes(bytes(blob))


# ---------------------------------------------------------------- 18.3: one atomic, verified unit
def test_a_checkpoint_is_one_directory_with_a_manifest_and_the_last_two_are_kept(gpt2, tmp_path):
    checkpointed(gpt2, tmp_path / "run")
    assert steps_on_disk(tmp_path / "run") == [12, 9]          # 3 and 6 were removed, newest first
    latest = resume.latest_checkpoint(tmp_path / "run")
    assert sorted(os.listdir(latest)) == ["manifest.json", "trainer.json", "trainer.safetensors"]
    manifest = json.loads((latest / "manifest.json").read_text())
    assert manifest["step"] == 12
    assert manifest["files"]["trainer.json"]["size"] == (latest / "trainer.json").stat().st_size
    assert not [p for p in (tmp_path / "run").rglob("*.tmp")]  # no temporary left behind


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one_with_a_warning(gpt2, tmp_path):
    full = checkpointed(gpt2, tmp_path / "full", max_steps=12)
    from ptuning_lab.trainer import Callback

    class Kill(Callback):                           # stopped at step 8: checkpoints at steps 3 and 6
        def on_step_end(self, trainer, step, loss):
            if step == 8:
                raise KeyboardInterrupt

    part = make_trainer(gpt2, out=tmp_path / "part", max_steps=12, checkpoint_every=3)
    part.callbacks.append(Kill())
    with pytest.warns(UserWarning, match="interrupted"):
        part.fit()
    assert steps_on_disk(tmp_path / "part") == [6, 3]
    (tmp_path / "part" / "state" / "step-000006" / "trainer.safetensors").write_bytes(b"")    # a torn file
    with pytest.warns(UserWarning, match=r"step-000006: trainer.safetensors is damaged: it changed after it was written \(0 bytes.*resuming from step 3"):
        resumed = make_trainer(gpt2, out=tmp_path / "part", max_steps=12, checkpoint_every=3).fit(resume=True)
    torch.testing.assert_close(resumed.prompt, full.prompt, atol=1e-6, rtol=0)
    assert resumed.history["train"] == full.history["train"]
    run = ckpt.load_run(tmp_path / "part")
    assert run.snapshots.shape[0] == len(run.snapshot_steps) == len(full.snapshot_steps)   # never more prompts than steps
    assert steps_on_disk(tmp_path / "part") == [12, 9]          # the damaged step 6 was replaced, then pruned


def test_a_checkpoint_without_its_manifest_is_incomplete(gpt2, tmp_path):
    checkpointed(gpt2, tmp_path / "run", max_steps=3)
    (tmp_path / "run" / "state" / "step-000003" / "manifest.json").unlink()
    with pytest.raises(ckpt.CheckpointError, match=r"no usable checkpoint \(state/step-000003: it has no manifest"):
        make_trainer(gpt2, out=tmp_path / "run", max_steps=3, checkpoint_every=3).fit(resume=True)


# ---------------------------------------------------------------- 18.4: every setting that changes the result
@pytest.mark.parametrize("change, words", [
    ({"task": toy_task(28)}, r"the task's data differs \(saved 12/6/6 train/dev/test examples.*now 14/7/7"),
    ({"task": Task("other", *[getattr(toy_task(), f) for f in ("template", "train", "dev", "test", "answers")])},
     r"task differs \(saved \"toy\", now \"other\"\)"),
    ({"lr": 0.02}, r"train.lr differs \(saved 0.01, now 0.02\)"),
    ({"seed": 3}, r"train.seed differs"),
    ({"template": "[P] Direction of [X] is [P][P]"}, r"template differs"),
])
def test_resume_refuses_other_settings_and_lists_them(gpt2, tmp_path, change, words):
    checkpointed(gpt2, tmp_path / "run", max_steps=3)
    change = dict(change)
    if "task" in change or "template" in change:
        trainer = make_trainer_with(gpt2, tmp_path / "run", **change)
    else:
        trainer = make_trainer(gpt2, out=tmp_path / "run", max_steps=3, checkpoint_every=3, **change)
    with pytest.raises(ckpt.CheckpointError, match="cannot resume: " ".*" + words +
                       ".*use the same settings or start a new run with another --out"):
        trainer.fit(resume=True)


def make_trainer_with(lm, out, task=None, template="[P][P] Direction of [X] is [P]"):
    """make_trainer's run (3 steps) with another task or template."""
    from ptuning_lab.prompts import build_encoder
    from ptuning_lab.trainer import TrainConfig, Trainer

    enc = build_encoder("mlp", 3, lm.embedding.detach(), init="vocab", seed=0).double()
    cfg = TrainConfig(lr=1e-2, batch_size=4, max_steps=3, eval_every=3, snapshot_every=2, checkpoint_every=3)
    return Trainer(lm, enc, task or toy_task(), template, cfg, out_dir=out, progress=False)


def test_the_task_fingerprint_follows_the_data_seed_and_max_examples():
    from ptuning_lab.tasks import load_task

    base = resume.task_fingerprint(load_task("capital", seed=0, max_examples=40))
    assert resume.task_fingerprint(load_task("capital", seed=0, max_examples=40)) == base
    assert resume.task_fingerprint(load_task("capital", seed=1, max_examples=40)) != base
    assert resume.task_fingerprint(load_task("capital", seed=0, max_examples=39)) != base


def test_checkpoint_every_may_differ_on_resume(gpt2, tmp_path):
    checkpointed(gpt2, tmp_path / "run", max_steps=6)
    make_trainer(gpt2, out=tmp_path / "run", max_steps=6, checkpoint_every=2).fit(resume=True)


# ---------------------------------------------------------------- 18.5: leftovers of a killed first checkpoint
def test_a_leftover_of_an_unfinished_first_checkpoint_says_what_to_do(gpt2, tmp_path):
    state = tmp_path / "run" / "state"
    (state / ".step-000003.ab12.tmp").mkdir(parents=True)
    (state / ".step-000003.ab12.tmp" / "trainer.safetensors").write_bytes(b"")     # 0 bytes, killed mid-write
    with pytest.raises(ckpt.CheckpointError, match=r"nothing to resume .* never completed .*without --resume"):
        make_trainer(gpt2, out=tmp_path / "run", max_steps=3, checkpoint_every=3).fit(resume=True)
    (tmp_path / "run" / ".prompt.safetensors.x1y2.tmp").write_bytes(b"")           # an unfinished atomic write
    checkpointed(gpt2, tmp_path / "run", max_steps=3)                               # a fresh run over them
    assert not list((tmp_path / "run").rglob("*.tmp"))                              # our leftovers are cleaned
    assert steps_on_disk(tmp_path / "run") == [3]


def test_without_any_checkpoint_resume_says_how_to_make_one(gpt2, tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(ckpt.CheckpointError, match="nothing to resume .*--checkpoint-every"):
        make_trainer(gpt2, out=tmp_path / "run", max_steps=3).fit(resume=True)


# ---------------------------------------------------------------- 18.6: corruption is detected and named
def test_flipped_bytes_in_a_tensor_file_are_detected(gpt2, tmp_path):
    checkpointed(gpt2, tmp_path / "run", max_steps=3)
    flip_tensor_bytes(tmp_path / "run" / "prompt.safetensors")
    with pytest.raises(ckpt.CheckpointError, match="does not match the sha256"):
        ckpt.load_run(tmp_path / "run")
    # in a checkpoint: the manifest's hash catches it; and safetensors' own hash if the manifest were re-made
    step = tmp_path / "run" / "state" / "step-000003"
    flip_tensor_bytes(step / "trainer.safetensors")
    with pytest.raises(ckpt.CheckpointError, match="trainer.safetensors is damaged: it changed after it was written"):
        make_trainer(gpt2, out=tmp_path / "run", max_steps=3, checkpoint_every=3).fit(resume=True)
    rewrite_manifest(step)
    with pytest.raises(ckpt.CheckpointError, match="does not match the sha256"):
        make_trainer(gpt2, out=tmp_path / "run", max_steps=3, checkpoint_every=3).fit(resume=True)


@pytest.mark.parametrize("edit, words", [
    (lambda m: {**m, "step": "3"}, r"'step' is str, not int"),
    (lambda m: {k: v for k, v in m.items() if k != "optimizer"}, r"it has no 'optimizer'"),
    (lambda m: [m], r"it holds a JSON list, not an object"),
])
def test_a_hand_edited_trainer_json_is_named_damaged(gpt2, tmp_path, edit, words):
    checkpointed(gpt2, tmp_path / "run", max_steps=3)
    step = tmp_path / "run" / "state" / "step-000003"
    path = step / "trainer.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    with pytest.raises(ckpt.CheckpointError, match="trainer.json is damaged: it changed after it was written.*or restore it"):
        make_trainer(gpt2, out=tmp_path / "run", max_steps=3, checkpoint_every=3).fit(resume=True)
    rewrite_manifest(step)
    with pytest.raises(ckpt.CheckpointError, match=r"this run's trainer.json is damaged: " + words +
                       r".*start a new run or restore it"):
        make_trainer(gpt2, out=tmp_path / "run", max_steps=3, checkpoint_every=3).fit(resume=True)


@pytest.mark.parametrize("edit, words", [
    (lambda c: {**c, "encoder": "mlp"}, r"'encoder' is \"mlp\", not an object"),
    (lambda c: {**c, "encoder": {k: v for k, v in c["encoder"].items() if k != "num_virtual_tokens"}},
     r"'encoder.num_virtual_tokens' is null"),
    (lambda c: {**c, "hidden_size": str(c["hidden_size"])}, r"'hidden_size' is \"32\", not a positive whole number"),
    (lambda c: [c], r"it holds a JSON list"),
])
def test_a_hand_edited_config_json_is_named_damaged(gpt2, tmp_path, capsys, edit, words):
    checkpointed(gpt2, tmp_path / "run", max_steps=3)
    path = tmp_path / "run" / "config.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    with pytest.raises(ckpt.CheckpointError, match=r"this run's config.json is damaged: " + words +
                       r".*start a new run or restore it"):
        ckpt.load_run(tmp_path / "run")
    # the command line prints it as one error line, exit status 2, no traceback
    assert main(["decode", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: this run's config.json is damaged")


def test_load_run_checks_its_argument():
    with pytest.raises(ckpt.CheckpointError, match=r"needs the path of a run directory \(a str or Path\), got NoneType"):
        ckpt.load_run(None)


def test_a_run_written_before_hashes_still_loads(tmp_path):
    """Files without the sha256 metadata (older runs, PEFT adapters) load as they are."""
    from safetensors.torch import save_file

    save_file({"prompt": torch.ones(2, 3)}, str(tmp_path / "old.safetensors"))
    assert torch.equal(ckpt.read_tensors(tmp_path / "old.safetensors")["prompt"], torch.ones(2, 3))
    ckpt.write_tensors(tmp_path / "new.safetensors", {"prompt": torch.ones(2, 3)})
    assert torch.equal(ckpt.read_tensors(tmp_path / "new.safetensors")["prompt"], torch.ones(2, 3))
