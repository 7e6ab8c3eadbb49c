"""No pickle anywhere: tensors through safetensors, configs as JSON, remote code never trusted by default."""
import re
from pathlib import Path

import pytest

import ptuning_lab
from helpers import make_tiny_lm

SOURCES = sorted(Path(ptuning_lab.__file__).parent.glob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_no_pickle_or_remote_code(path):
    text = path.read_text()
    assert not re.search(r"^\s*import pickle|^\s*from pickle|\bjoblib\b|\bdill\b", text, re.M), "pickle-based I/O"
    for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
        assert "weights_only=True" in m.group(1), f"torch.load without weights_only=True in {path.name}"
    assert "trust_remote_code=True" not in text


def test_run_files_are_safetensors_and_json(tokenizer, tmp_path):
    from ptuning_lab.encoders import build_encoder
    from ptuning_lab.tasks import Example, Task
    from ptuning_lab.trainer import TrainConfig, Trainer

    lm = make_tiny_lm("gpt2", tokenizer)
    exs = [Example(f"w{i}", "north") for i in range(8)]
    task = Task("toy", "[X] is", exs[:4], exs[4:6], exs[6:], ["north"])
    enc = build_encoder("mlp", 2, lm.embedding.detach(), init="vocab")
    Trainer(lm, enc, task, "[P] [X] is [P]", TrainConfig(max_steps=2, eval_every=1, checkpoint_every=1),
            out_dir=tmp_path, progress=False).fit()
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["config.json", "history.json", "prompt.safetensors", "snapshots.safetensors",
                     *(f"state/step-00000{k}/{name}" for k in (1, 2)
                       for name in ("manifest.json", "trainer.json", "trainer.safetensors"))]


def test_absurd_virtual_token_count_is_refused(tokenizer):
    from ptuning_lab.encoders import build_encoder
    from ptuning_lab.tasks import Example, Task
    from ptuning_lab.trainer import Trainer

    lm = make_tiny_lm("gpt2", tokenizer)   # 128 positions
    exs = [Example(f"w{i}", "north") for i in range(8)]
    task = Task("toy", "[X] is", exs[:4], exs[4:6], exs[6:], ["north"])
    enc = build_encoder("direct", 200, lm.embedding.detach(), init="vocab")
    with pytest.raises(ValueError, match="do not fit the model's context of 128"):
        Trainer(lm, enc, task, "[P]*200 [X] is", progress=False)
