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
# # 06 · Classification with templates, anchors and verbalizers
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ptuning-lab/ptuning_lab/blob/main/notebooks/06_nlu_with_verbalizers.ipynb) [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/ptuning-lab/ptuning_lab/main?labpath=notebooks%2F06_nlu_with_verbalizers.ipynb)
#
# **What you will learn**
#
# - classification as next-word prediction: a template, and a verbalizer that maps each label to a word;
# - candidate accuracy: score only the label words;
# - how much the template and the label words matter, and how P-tuning repairs a bad template;
# - anchors: real task words kept among the virtual tokens.
#
# Part 6 of 7 of the ptuning_lab course. The model is `auto`: GPT-2 where it can be
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
# ## 1. A classification task
#
# `polarity` holds strongly positive and negative English words from the VADER lexicon (without
# the slurs and obscenities a sentiment lexicon also lists). The
# verbalizer turns each label into the word the model should say next: positive → " good",
# negative → " bad".

# %%
task = pl.load_task("polarity", max_examples=SIZE.max_examples)
print(task.summary())
print(task.train[:4])

# %%
# NBVAL_CHECK_OUTPUT
print(task.kind, task.verbalizer, task.answers)

# %% [markdown]
# **Candidate accuracy** compares the model's scores of the label words only (" good" vs " bad"),
# which is what a classifier needs; P@1 over the whole vocabulary is much stricter. The template
# decides what "next word" means:

# %%
templates = ['The word "[X]" means something', '"[X]" is a', '[X] is']
manual = {t: pl.evaluate(lm, t, task.test, answers=task.answers) for t in templates}
pd.DataFrame({t: {"candidate accuracy": r["candidate_accuracy"], "P@1": r["p_at_1"]} for t, r in manual.items()}).T.round(3)

# %% [markdown]
# Do the label words matter? The same template with other verbalizers:

# %%
verbalizers = [{"positive": "good", "negative": "bad"}, {"positive": "great", "negative": "terrible"},
               {"positive": "positive", "negative": "negative"}]
for v in verbalizers:
    t = pl.load_task("polarity", max_examples=SIZE.max_examples, verbalizer=v)
    r = pl.evaluate(lm, t.template, t.test, answers=t.answers)
    print(f"{v['positive']:>9} / {v['negative']:<9} candidate accuracy {r['candidate_accuracy']:.3f}")

# %% [markdown]
# ## 2. P-tuning a bad template, with and without an anchor
#
# Start from a weak manual template, `"[X]" is a` (its score is in the table above), and let virtual
# tokens surround the input. P-tuning's *anchors* are a few real words kept among the virtual
# tokens; here the anchor is "means", the verb of the first template. Both variants start from
# `init="auto"` (each `[P]` as the manual word beside it) and train for the same number of steps.

# %%
variants = {"virtual only": '[P]*3 "[X]" [P]*3', "with anchor": '[P]*3 "[X]" means [P]*3'}
runs = {name: pl.train_one(lm, task, encoder="mlp", template=tpl, init="auto", seed=0,
                          train=SIZE.train_kwargs(), progress=False)
        for name, tpl in variants.items()}
scores = {'manual "[X]" is a': manual['"[X]" is a']["candidate_accuracy"],
          **{name: run.metrics["test_candidate_accuracy"] for name, run in runs.items()}}
pd.Series(scores, name="test candidate accuracy").round(3)

# %%
figures.training_curves({name: [run.history] for name, run in runs.items()})

# %%
gain = scores["with anchor"] - scores["virtual only"]
n = len(task.test)
what = "helped" if gain > 1 / n else ("hurt" if gain < -1 / n else "made no difference beyond one test example")
print(f"In this run the anchor {what} ({gain:+.3f} on {n} test examples).")
weak = scores['manual "[X]" is a']
best_name = max(runs, key=lambda name: scores[name])
repaired = scores[best_name] - weak
print(f"P-tuning the weak template: {weak:.3f} manual -> {scores[best_name]:.3f} ({best_name}), "
      + ("a repair beyond one test example." if repaired > 1 / n else "no gain beyond one test example in this run."))

# %% [markdown]
# What did the prompts learn? Their nearest tokens:

# %%
for name, run in runs.items():
    print(f"{name:<13}", repr("".join(pl.manifold.decode_prompt(run.prompt, E, strings))))

# %% [markdown]
# ## Exercises
#
# 1. Choose your own verbalizer (e.g. positive → "nice", negative → "awful") and P-tune the anchored template with it.
# 2. Training optimises the first token of the label word over the whole vocabulary, while candidate accuracy compares only the label words. Which metric moves more during training? Compare `test_p_at_1` and `test_candidate_accuracy` of the runs above.
# 3. Classify your own sentences: write a `text,label` CSV (see notebook 07 for files) and train on it.

# %% [markdown] tags=["solution"]
# ## Solutions
#
# Each code cell below is collapsed: click the bar at its left to open it. Try the exercise first;
# an instructor's `make handouts` writes a copy of every lesson without this section.
#
# **1.**

# %% tags=["solution"] jupyter={"source_hidden": true}
mine = pl.load_task("polarity", max_examples=SIZE.max_examples, verbalizer={"positive": "nice", "negative": "awful"})
run = pl.train_one(lm, mine, encoder="mlp", template=variants["with anchor"], init="auto", seed=0,
                   train=SIZE.train_kwargs(), progress=False)
print(run.metrics["test_candidate_accuracy"])

# %% [markdown] tags=["solution"]
# **2.**

# %% tags=["solution"] jupyter={"source_hidden": true}
pd.DataFrame({name: {k: run.metrics[k] for k in ("test_p_at_1", "test_candidate_accuracy")} for name, run in runs.items()})

# %% [markdown] tags=["solution"]
# **3.**

# %% tags=["solution"] jupyter={"source_hidden": true}
import tempfile
from pathlib import Path
rows = ["text,label"] + [f"{w},positive" for w in ["lovely", "superb", "delightful", "splendid", "charming"]] \
       + [f"{w},negative" for w in ["awful", "dreadful", "horrid", "nasty", "vile"]]
words = Path(tempfile.mkdtemp()) / "my_words.csv"
words.write_text("# template: The word \"[X]\" means something\n" + "\n".join(rows) + "\n")
mine = pl.load_task(words, verbalizer={"positive": "good", "negative": "bad"})
print(pl.evaluate(lm, mine.template, mine.test, answers=mine.answers))

# %% [markdown]
# **Next:** [07 · Bring your own relation](07_bring_your_own_relation.ipynb)
