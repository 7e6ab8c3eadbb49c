"""docs/api.md is generated from ``ptuning_lab.__all__`` and must match the code it documents."""
import importlib.util
from pathlib import Path

import ptuning_lab

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("make_api_docs", REPO / "tools" / "make_api_docs.py")
make_api_docs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_api_docs)


def test_committed_api_page_equals_a_fresh_generation():
    committed = (REPO / "docs" / "api.md").read_text()
    assert committed == make_api_docs.generate(), (
        f"docs/api.md is out of date with ptuning_lab.__all__; regenerate it: {make_api_docs.COMMAND}")


def test_every_public_name_has_a_section_with_its_signature_and_docstring():
    page = make_api_docs.generate()
    for name in ptuning_lab.__all__:
        assert f"### `{name}`" in page or f"### class `{name}`" in page, name
    # the first paragraph of a docstring, and a signature as inspect gives it
    assert "Train ``encoder`` on ``task`` with ``template`` (which must contain [X] and at least one [P])." in page
    assert "load_task(\n    name_or_path: str | Path,\n    seed: int = 0," in page
    # dataclass configs list each field with its default and help text
    assert "| `batch_size` | `16` | Examples per step. |" in page


def test_check_mode_reports_a_stale_page(tmp_path, capsys):
    stale = tmp_path / "api.md"
    stale.write_text("# API reference\n")
    assert make_api_docs.main(["--check", str(stale)]) == 1
    assert make_api_docs.COMMAND in capsys.readouterr().err
    assert make_api_docs.main(["--out", str(stale)]) == 0
    assert make_api_docs.main(["--check", str(stale)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["api.md"]      # no temporary file left behind
