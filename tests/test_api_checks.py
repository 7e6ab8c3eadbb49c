"""The Python API refuses nonsense with the project's own errors (ValueError subclasses) that name the fix
(issue 18.8-18.10): model loading, task cells, nearest-token decoding, PEFT adapters."""
import json
import re

import pytest
import torch

from ptuning_lab import manifold
from ptuning_lab.frozen_lm import FrozenLM, ModelArgumentError
from ptuning_lab.models import ModelLoadError
from ptuning_lab.tasks import TaskError, load_task


@pytest.mark.parametrize("kwargs, words", [
    ({"name": 123}, r"model name must be a non-empty string or path, got int 123.*FrozenLM.load\('auto'\)"),
    ({"name": None}, r"got NoneType"),
    ({"name": "auto", "device": "tpu"}, r"unknown device 'tpu'; use one of cpu, cuda, mps"),
    ({"name": "auto", "device": 0.5}, r"device must be a string"),
    ({"name": "auto", "dtype": "float32"}, r"dtype must be a torch dtype"),
])
def test_frozen_lm_load_checks_its_arguments_before_loading(kwargs, words):
    with pytest.raises(ModelArgumentError, match=words) as info:
        FrozenLM.load(**kwargs)
    assert isinstance(info.value, ValueError) and isinstance(info.value, ModelLoadError)   # the CLI's one-line errors


@pytest.mark.parametrize("subject, code", [("Fra\x00nce", "U+0000"), ("Fr\x1bance", "U+001B"),
                                            ("\u202eecnarF", "U+202E"), ("Fran\u2066ce", "U+2066")])
def test_task_cells_with_control_or_direction_characters_are_refused(tmp_path, subject, code):
    path = tmp_path / "t.jsonl"
    rows = [{"subject": subject, "object": "Paris"}] + [{"subject": f"s{i}", "object": "o"} for i in range(6)]
    path.write_text("# template: The capital of [X] is\n" + "\n".join(json.dumps(r) for r in rows))
    with pytest.raises(TaskError, match=f"invisible character {re.escape(code)}.*Delete it"):
        load_task(path)


def test_two_unicode_spellings_of_one_subject_are_duplicates(tmp_path):
    path = tmp_path / "t.jsonl"
    rows = [{"subject": "Caf\u00e9", "object": "a"}, {"subject": "Cafe\u0301", "object": "b"}] + \
           [{"subject": f"s{i}", "object": "o"} for i in range(6)]
    path.write_text("# template: The capital of [X] is\n" + "\n".join(json.dumps(r) for r in rows))
    with pytest.raises(TaskError, match=r"duplicate subjects: 'Café' \(lines 2, 3\)"):
        load_task(path)


def test_nearest_tokens_needs_k_of_at_least_one_and_a_prompt_with_rows():
    emb = torch.randn(50, 8)
    for k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=r"k=.*a whole number >= 1"):
            manifold.nearest_tokens(torch.randn(2, 8), emb, None, k=k)
    strings = [f"t{i}" for i in range(50)]
    with pytest.raises(ValueError, match="0 virtual tokens has nothing to decode"):     # was torch.cat() on []
        manifold.decode_prompt(torch.empty(0, 8), emb, strings)
    assert len(manifold.nearest_tokens(torch.randn(2, 8), emb, None, k=1)) == 2 * len(manifold.METRICS)


def test_a_peft_adapter_with_zero_virtual_tokens_is_refused(tmp_path):
    from ptuning_lab import checkpoint as ckpt
    from ptuning_lab.peft_interop import CONFIG_FILE, WEIGHTS_FILE, PeftImportError, import_peft

    (tmp_path / CONFIG_FILE).write_text(json.dumps({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 0,
                                                    "token_dim": 8, "task_type": "CAUSAL_LM"}))
    ckpt.write_tensors(tmp_path / WEIGHTS_FILE, {"prompt_embeddings": torch.empty(0, 8)})
    with pytest.raises(PeftImportError, match="num_virtual_tokens=0: the adapter holds no virtual tokens"):
        import_peft(tmp_path)
