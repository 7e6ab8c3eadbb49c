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
# # 01 · The vocabulary manifold
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ptuning-lab/ptuning_lab/blob/main/notebooks/01_vocabulary_manifold.ipynb) [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/ptuning-lab/ptuning_lab/main?labpath=notebooks%2F01_vocabulary_manifold.ipynb)
#
# **What you will learn**
#
# - the input embedding matrix as a space: how long token vectors are, who their neighbours are, and a 2-D map of it;
# - what "close to a real token" means, measured against the vocabulary itself and against random vectors;
# - manual prompts as knowledge probes (LAMA) and their P@1: the baseline every trained prompt has to beat.
#
# Part 1 of 7 of the ptuning_lab course. The model is `auto`: GPT-2 where it can be
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
# ## 1. The embedding matrix
#
# A causal language model reads token ids, and its first layer turns each id into a row of the
# **input embedding matrix** `E` of shape `(V, d)`: `V` tokens, `d` numbers each. A trained prompt
# (notebooks 02-05) lives in the same `d`-dimensional space, so we first look at where the real
# tokens are: this cloud of `V` points is the *vocabulary manifold*.

# %%
ids = lm.tokenize(" The capital of France is Paris")
print(E.shape, E.dtype)
print([pl.readable_token(strings[i]) for i in ids])     # "␣" marks a token's leading space

# %% [markdown]
# ### How long is a token vector?
#
# `vocab_stats` computes the model's baselines once (norms of all `V` rows, each sampled token's
# nearest *other* token, and random vectors drawn with the vocabulary's mean and spread) and caches
# them on disk. The strip below the histogram shows the words "The capital of".

# %%
stats = pl.vocab_stats(E, lm.name, subset=SIZE.stats_subset)
print(f"mean token norm {stats.mean_norm:.2f}; median distance to the nearest other token {stats.median_nn_l2:.2f}")
figures.norm_distribution(stats, {"The capital of": E[lm.tokenize("The capital of")]})

# %% [markdown]
# ### Neighbours
#
# `nearest_tokens` ranks the whole vocabulary for each query vector. Three metrics, because they
# disagree away from the manifold: `cosine` (direction only), `l2` (distance) and `dot` (the raw
# inner product, the logit a tied output layer would give). Here, by cosine:

# %%
words = [" Paris", " France", " capital", " king"]
word_ids = [lm.tokenize(w)[0] for w in words]
table = pl.nearest_tokens(E[word_ids], E, strings, k=6, metrics=("cosine",))
table["word"] = [words[i] for i in table["virtual_token"]]
table.pivot(index="word", columns="rank", values="token")

# %% [markdown]
# Rank 0 is the word itself (cosine 1): a real token sits exactly on the manifold.

# %%
# NBVAL_CHECK_OUTPUT
print(bool((table.query("rank == 0")["token_id"].to_numpy() == word_ids).all()))

# %% [markdown]
# ### What counts as close?
#
# The grey histogram is each token's best cosine to *another* token; the orange one is the best
# cosine of random vectors to any token. A vector whose best cosine falls in the orange range looks
# like noise to the model; the strip shows six random vectors, the `"random"` initialisation of a
# prompt. Notebook 02 shows what starting there does to training.

# %%
random_prompt = pl.encoders.initial_prompt("random", 6, E, seed=0)
figures.nn_cosine_distribution(stats, {"random init": random_prompt}, E)

# %% [markdown]
# ### A map of the vocabulary
#
# `fit_projection` fits a 2-D map once per model (cached). PCA is linear, so a prompt placed on it
# later lands exactly where its coordinates say; every notebook uses this one map so trajectories
# are comparable. UMAP keeps cosine neighbourhoods instead. Hover a point to read its token.

# %%
projection = pl.fit_projection(E, strings, lm.name, subset=SIZE.map_subset)
print("PCA: variance explained by the two axes", projection.explained_variance_ratio.round(3))
figures.vocab_map(projection, {"The capital of": E[lm.tokenize("The capital of")]}, strings, E,
                  max_vocab_points=SIZE.map_points)

# %% [markdown]
# The grey words are common tokens written where they land. UMAP is optional: fitting it takes
# about a minute and a half on 2 busy cores at the lesson size the first time (then it is cached),
# so the lesson fits it only when you set `FIT_UMAP = True` (the CI size always does, on a few
# hundred tokens).

# %%
FIT_UMAP = SIZE.name == "ci"       # True: also fit the UMAP map (cosine neighbourhoods)
if FIT_UMAP:
    umap_map = pl.fit_projection(E, strings, lm.name, method="umap", subset=SIZE.umap_subset,
                                 n_epochs=SIZE.umap_epochs)
    display(figures.vocab_map(umap_map, None, strings, max_vocab_points=SIZE.map_points, title="UMAP (cosine)"))

# %% [markdown]
# ## 2. Manual prompts as knowledge probes
#
# LAMA (Petroni et al., 2019) asks a model for facts with a cloze sentence: after
# `The capital of France is`, is `" Paris"` the most likely next token? **P@1** is the fraction of
# subjects for which the top token over the *whole* vocabulary is the answer's first token.

# %%
countries = ["France", "Japan", "Egypt", "Peru"]
for country, top in zip(countries, lm.predict_next("The capital of [X] is", countries, k=3)):
    print(f"{country:<7}", ", ".join(f"{t!r} {p:.2f}" for t, p in top))

# %% [markdown]
# Four relations built from offline data, each with its manual template, scored on their test split:

# %%
rows, tasks = [], {}
for name in ["capital", "continent", "language", "currency"]:
    tasks[name] = t = pl.load_task(name, max_examples=SIZE.max_examples)
    r = pl.evaluate(lm, t.template, t.test)
    rows.append({"task": name, "template": t.template, "test examples": r["n"], "P@1": round(r["p_at_1"], 3)})
probes = pd.DataFrame(rows).set_index("task")
probes

# %% [markdown]
# P@1 asks for the answer's first token over the *whole* vocabulary. A low P@1 does not have to
# mean the model lacks the fact: it may say something else first. What does it say on the weakest
# relation? (*Candidate accuracy* ranks only the task's possible answers, the distinct objects of
# its data, by their likelihood after the template.)

# %%
import collections
weakest = probes["P@1"].idxmin()
t = tasks[weakest]
top = lm.predict_next(t.template, [ex.input for ex in t.test], k=3)
for ex, preds in list(zip(t.test, top))[:4]:
    print(f"{ex.input:<16} answer {ex.target!r:<11} model:", ", ".join(f"{tok!r} {p:.2f}" for tok, p in preds))
first = collections.Counter(preds[0][0] for preds in top)
said, times = first.most_common(1)[0]
answers = sorted({ex.target for ex in t.test})
candidates = pl.evaluate(lm, t.template, t.test, answers=t.answers)["candidate_accuracy"]
print(f"\nOn '{weakest}' ({t.template!r}) the model's first word is {said!r} for {times} of {len(t.test)} test "
      f"subjects; the answers are {', '.join(answers)}. P@1 is {probes.loc[weakest, 'P@1']:.3f}, yet ranking only its "
      f"{len(t.answers)} possible answers it puts the right one first for {candidates:.0%} of them.")

# %% [markdown]
# Manual prompts are brittle: the same question in other words gives other numbers. A phrasing is
# *chosen* on the dev split; the test split is then read once, for the chosen one only (choosing on
# test would make its score optimistic).

# %%
capital = tasks["capital"]
phrasings = ["The capital of [X] is", "The capital city of [X] is", "[X]'s capital is", "[X] has its capital in"]
dev = pd.Series({p: pl.evaluate(lm, p, capital.dev)["p_at_1"] for p in phrasings}, name="dev P@1")
chosen = dev.idxmax()
dev.round(3)

# %%
chosen_test = pl.evaluate(lm, chosen, capital.test)["p_at_1"]
own_test = probes.loc["capital", "P@1"]
print(f"dev P@1 ranges from {dev.min():.3f} to {dev.max():.3f} over {len(phrasings)} phrasings. "
      f"Chosen on dev: {chosen!r}, test P@1 {chosen_test:.3f}.")
print(f"The baseline of every later lesson is the task's own template {capital.template!r} "
      f"(dev P@1 {dev[capital.template]:.3f}, test P@1 {own_test:.3f}): the template P-tuning starts from, "
      + ("which is also the dev choice here." if chosen == capital.template else
         f"not the dev choice here, so a trained prompt is compared with the manual words it keeps."))

# %% [markdown]
# ## Looking ahead
#
# P-tuning keeps the manual words and adds **virtual tokens** `[P]` around them: vectors that no
# vocabulary row has to match, trained so the model answers correctly. The template below is the
# one used from notebook 02 on; without its `[P]`s it is exactly the manual prompt.

# %%
# NBVAL_CHECK_OUTPUT
t = pl.Template.parse("[P]*3 The capital of [X] is [P]*3")
print(t.num_virtual_tokens, t.manual_text())

# %% [markdown]
# ## Exercises
#
# 1. Find the neighbours of a word of your choice with all three metrics. Where do `l2` and `dot` disagree with `cosine`, and why? (Hint: look at the norms of the neighbours.)
# 2. Write two more phrasings of the capital probe. Can you beat the chosen one on the dev split, and does the test split agree?
# 3. Which capitals does the manual prompt get wrong? Print the subject, the answer and the model's top token.

# %% [markdown] tags=["solution"]
# ## Solutions
#
# Each code cell below is collapsed: click the bar at its left to open it. Try the exercise first;
# an instructor's `make handouts` writes a copy of every lesson without this section.
#
# **1.**

# %% tags=["solution"] jupyter={"source_hidden": true}
w = lm.tokenize(" river")[0]
t = pl.nearest_tokens(E[w], E, strings, k=5)          # all three metrics
t["norm"] = E[t["token_id"].to_numpy()].norm(dim=1).numpy()
t.pivot(index="rank", columns="metric", values="token")

# %% [markdown] tags=["solution"]
# `dot` favours long vectors (a large norm inflates the inner product), `l2` favours vectors of a
# similar length, `cosine` ignores length: they agree when the neighbours have similar norms.
#
# **2.**

# %% tags=["solution"] jupyter={"source_hidden": true}
for p in ["The capital of the country [X] is", "[X]. Its capital city is"]:
    print(p, pl.evaluate(lm, p, capital.dev)["p_at_1"], pl.evaluate(lm, p, capital.test)["p_at_1"])

# %% [markdown] tags=["solution"]
# Whatever you find, check it on the dev split first: choosing a phrasing on the test split makes
# its score optimistic.
#
# **3.**

# %% tags=["solution"] jupyter={"source_hidden": true}
preds = lm.predict_next(capital.template, [ex.input for ex in capital.test], k=1)
for ex, top in zip(capital.test, preds):
    if top[0][0].strip() != lm.tokenizer.decode(lm.answer_ids(ex.target)[:1]).strip():
        print(f"{ex.input:<25} {ex.target:<15} -> {top[0][0]!r}")

# %% [markdown]
# **Next:** [02 · Direct prompt tuning](02_direct_prompt_tuning.ipynb)
