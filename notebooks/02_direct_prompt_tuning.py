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
# # 02 · Direct prompt tuning
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ptuning-lab/ptuning_lab/blob/main/notebooks/02_direct_prompt_tuning.ipynb) [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/ptuning-lab/ptuning_lab/main?labpath=notebooks%2F02_direct_prompt_tuning.ipynb)
#
# **What you will learn**
#
# - a template with virtual tokens `[P]`, and a prompt that is a free `(n, d)` parameter (prompt tuning, Lester et al. 2021);
# - why the starting point matters: what the model reads at step 0 from each init, measured;
# - training with a live view of the loss, dev P@1 and the vectors on the vocabulary map;
# - how far the trained vectors leave the manifold, and what they decode to.
#
# Part 2 of 7 of the ptuning_lab course. The model is `auto`: GPT-2 where it can be
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

# %%
task = pl.load_task("capital", max_examples=SIZE.max_examples)
template = pl.default_template(task.template)     # "[P]*3 The capital of [X] is [P]*3"
init = pl.default_init(template)                   # each [P] starts as the manual word beside it
print(task.summary())
print("template:", template, "| init:", init)

# %% [markdown]
# ## 1. The prompt is the parameter
#
# The `direct` prompt encoder holds one `(n, d)` matrix and returns it: each of the `n = 6`
# virtual tokens is a free vector that the optimiser moves. The language model stays frozen; only
# these `6 × d` numbers learn. We start each one at the embedding of the manual word beside it
# (`pl.default_init`): the three before the words as "The capital of", the three after as "is".

# %%
encoder = pl.build_encoder("direct", 6, E, init=init, tokenize=lm.tokenize, seed=0)
print(encoder, "| trainable parameters:", encoder.num_trainable_parameters())
print("decoded start:", pl.manifold.decode_prompt(encoder(), E, strings))

# %% [markdown]
# At step 0 the prompt *is* the embeddings of the init's tokens, one per row:

# %%
# NBVAL_CHECK_OUTPUT
phrase = lm.tokenize(init.removeprefix("text:"))
print(torch.equal(encoder().detach(), E[[phrase[i % len(phrase)] for i in range(6)]]))

# %% [markdown]
# What does the model read before training? How does that start compare with the manual prompt on
# the dev split, with the template's words cycled over the six slots (the default before
# `benchmarks/init_table.py` measured it), and with random vectors, which sit far from every token
# (notebook 01)? The last row puts the template's words, cycled, on six `[P]`s all *before* the
# manual text, so nothing stands between "is" and the answer.

# %%
decoded = pl.manifold.decode_prompt(encoder(), E, strings)
print("the model reads:", repr("".join(decoded[:3]) + " The capital of France is" + "".join(decoded[3:])))
words = " ".join(pl.Template.parse(template).manual_text().replace("[X]", " ").split())
before = "[P]*6 " + task.template
starts = {"manual prompt": (task.template, None), "default init": (template, encoder().detach()),
          "words cycled": (template, pl.encoders.initial_prompt("text:" + words, 6, E, lm.tokenize)),
          "random init": (template, pl.encoders.initial_prompt("random", 6, E, seed=0)),
          "all six before": (before, pl.encoders.initial_prompt("text:" + words, 6, E, lm.tokenize))}
step0 = pd.DataFrame({name: pl.evaluate(lm, tpl, task.dev, prompt) for name, (tpl, prompt) in starts.items()}).T
step0[["p_at_1", "loss"]].rename(columns={"p_at_1": "dev P@1", "loss": "dev loss"}).round(3)

# %%
inits = step0.drop(["manual prompt", "all six before"])
closest = inits["loss"].idxmin()
print(f"Of the starts with [P]s after 'is', {closest!r} has the lowest dev loss ({inits.loss[closest]:.2f}; "
      f"manual prompt {step0.loss['manual prompt']:.2f}, random {step0.loss['random init']:.2f}, "
      f"words cycled {step0.loss['words cycled']:.2f}).")
print(f"Their best dev P@1 at step 0 is {inits.p_at_1.max():.3f} against the manual prompt's "
      f"{step0.p_at_1['manual prompt']:.3f}; with all six [P]s before the words it is "
      f"{step0.p_at_1['all six before']:.3f}: " + (
          "the [P]s between 'is' and the answer are what the model trips over; training has to teach it "
          "to read past them." if step0.p_at_1["all six before"] > inits.p_at_1.max() else
          "on this split the placement of the [P]s makes no difference at step 0."))

# %% [markdown]
# ## 2. Training, live
#
# `LiveTrainingView` is a trainer callback: it redraws the curves and the prompt on the map at
# most once a second while `fit()` runs. Show it first, then train.

# %%
stats = pl.vocab_stats(E, lm.name, subset=SIZE.stats_subset)                # cached after the first call
projection = pl.fit_projection(E, strings, lm.name, subset=SIZE.map_subset)  # one PCA map for every run

# %%
view = widgets.LiveTrainingView(projection, every_s=1.0, embedding=E, token_strings=strings, name="direct")
view.widget

# %%
config = pl.TrainConfig(**SIZE.train_kwargs())
result = pl.Trainer(lm, encoder, task, template, config, callbacks=[view], progress=False).fit()
prompt = result.prompt.to(lm.device)        # the best prompt on dev, (6, d)
print(f"best dev P@1 {result.best_dev['p_at_1']:.3f} at step {result.best_step} ({result.seconds:.0f} s)")

# %%
manual = pl.evaluate(lm, task.template, task.test)["p_at_1"]
tuned = pl.evaluate(lm, template, task.test, prompt)["p_at_1"]
print(f"test P@1: manual prompt {manual:.3f}, direct prompt tuning {tuned:.3f} ({tuned - manual:+.3f})")

# %% [markdown]
# ## 3. Leaving the manifold
#
# `drift_over_training` measures every snapshot: `norm_ratio` (length / mean token length),
# `max_cosine` (cosine to the nearest token) and `nn_l2_ratio` (distance to the nearest token /
# the typical distance between neighbouring tokens). At step 0 the vectors are tokens: ratio 1,
# cosine 1, distance 0.

# %%
drift = pl.drift_over_training(result.snapshots, E, result.snapshot_steps, stats, strings)
per_step = drift.groupby("step")[["norm_ratio", "max_cosine", "nn_l2_ratio"]].mean()
per_step.round(3)

# %%
first, last = per_step.iloc[0], per_step.iloc[-1]
print(f"cosine to the nearest token: {first.max_cosine:.3f} at step 0 -> {last.max_cosine:.3f} at step {per_step.index[-1]}")
print(f"distance to the nearest token: {last.nn_l2_ratio:.2f} x the typical distance between neighbouring tokens")

# %% [markdown]
# Where do the trained vectors sit among the vocabulary? The strips place them in the
# distributions of notebook 01: tokens' best cosine to another token (grey) and random vectors'
# (orange).

# %%
figures.nn_cosine_distribution(stats, {"start": result.snapshots[0], "trained": result.prompt}, E)

# %%
figures.vocab_map(projection, {"direct": result}, strings, E, max_vocab_points=SIZE.map_points)

# %% [markdown]
# ## 4. Decoding
#
# The nearest tokens of each trained vector, by cosine, on a fixed colour scale (0 to 1). Beside
# each row: the percent of random vectors whose best cosine to a token is no higher; only a row
# above 95% is nearer to its token than chance.

# %%
figures.nearest_token_heatmap(result.prompt, E, strings, k=5, stats=stats)

# %%
start_words = pl.manifold.decode_prompt(result.snapshots[0], E, strings)
end_words = pl.manifold.decode_prompt(result.prompt, E, strings)
same = sum(a == b for a, b in zip(start_words, end_words))
print(pl.manifold.decoding_baseline(result.prompt, E, stats).summary())
print(f"{same} of 6 vectors still decode to their starting word ({''.join(start_words)!r} -> "
      f"{''.join(end_words)!r}), while test P@1 went from the manual {manual:.3f} to {tuned:.3f}: "
      "the decoded text and the prompt are not the same thing (notebook 05 measures the gap).")

# %% [markdown]
# ## Exercises
#
# 1. Train the same encoder from `init="random"` for the same number of steps and compare the dev P@1 curves.
# 2. Raise the learning rate ten times (`lr=3e-2`). How far do the vectors drift now, and does accuracy follow?
# 3. Use fewer virtual tokens: `"[P] The capital of [X] is [P]"`. What changes in accuracy and in decoding?

# %% [markdown] tags=["solution"]
# ## Solutions
#
# Each code cell below is collapsed: click the bar at its left to open it. Try the exercise first;
# an instructor's `make handouts` writes a copy of every lesson without this section.
#
# **1.**

# %% tags=["solution"] jupyter={"source_hidden": true}
rand = pl.build_encoder("direct", 6, E, init="random", tokenize=lm.tokenize, seed=0)
r_rand = pl.Trainer(lm, rand, task, template, pl.TrainConfig(**SIZE.train_kwargs()), progress=False).fit()
figures.training_curves({"text init": [result.history], "random init": [r_rand.history]})

# %% [markdown] tags=["solution"]
# Compare where the two curves start and where they end: the step-0 scores in section 1 already
# differ, and the curves show whether the gap closes within this budget.
#
# **2.**

# %% tags=["solution"] jupyter={"source_hidden": true}
fast = pl.build_encoder("direct", 6, E, init=init, tokenize=lm.tokenize, seed=0)
r_fast = pl.Trainer(lm, fast, task, template, pl.TrainConfig(lr=3e-2, **SIZE.train_kwargs()), progress=False).fit()
d = pl.drift_metrics(r_fast.prompt, E, stats, strings).table
print(d[["norm_ratio", "max_cosine", "nearest_token"]], r_fast.best_dev)

# %% [markdown] tags=["solution"]
# **3.**

# %% tags=["solution"] jupyter={"source_hidden": true}
t2 = "[P] The capital of [X] is [P]"
enc2 = pl.build_encoder("direct", 2, E, init=pl.default_init(t2), tokenize=lm.tokenize, seed=0)
r2 = pl.Trainer(lm, enc2, task, t2, pl.TrainConfig(**SIZE.train_kwargs()), progress=False).fit()
print(r2.best_dev, pl.manifold.decode_prompt(r2.prompt, E, strings))

# %% [markdown]
# **Next:** [03 · P-tuning: MLP and LSTM prompt encoders](03_p_tuning_encoders.ipynb)
