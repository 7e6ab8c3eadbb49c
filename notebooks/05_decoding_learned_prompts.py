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
# # 05 · Decoding learned prompts
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ptuning-lab/ptuning_lab/blob/main/notebooks/05_decoding_learned_prompts.ipynb) [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/ptuning-lab/ptuning_lab/main?labpath=notebooks%2F05_decoding_learned_prompts.ipynb)
#
# **What you will learn**
#
# - nearest-token decoding of a trained prompt with three metrics, and where they disagree;
# - faithfulness: snap each vector to its nearest token and measure what the task loses;
# - waywardness (Khashabi et al. 2022): a prompt can solve the task while decoding to an unrelated sentence; a sweep of the weight γ that is placed from the run itself, on a slider;
# - when decoding means something: each nearest-token score against random vectors of the same norm.
#
# Part 5 of 7 of the ptuning_lab course. The model is `auto`: GPT-2 where it can be
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

# %%
stats = pl.vocab_stats(E, lm.name, subset=SIZE.stats_subset)                # cached after the first call
projection = pl.fit_projection(E, strings, lm.name, subset=SIZE.map_subset)  # one PCA map for every run

# %%
encoder = pl.build_encoder("mlp", 6, E, init=init, tokenize=lm.tokenize, seed=0)
result = pl.Trainer(lm, encoder, task, template, pl.TrainConfig(**SIZE.train_kwargs()), progress=False).fit()
prompt = result.prompt.to(lm.device)
print(f"best dev P@1 {result.best_dev['p_at_1']:.3f} ({result.seconds:.0f} s)")

# %% [markdown]
# ## 1. Nearest tokens, three ways
#
# The top token of each virtual token by `cosine`, `l2` and `dot`, and how often they agree. Off
# the manifold they can part ways (`dot` favours long token vectors, `l2` tokens of a similar
# length); the agreement line says whether they do for this prompt.

# %%
table = pl.nearest_tokens(prompt, E, strings, k=5)
print(pl.metric_agreement(table))
table.query("rank == 0").pivot(index="virtual_token", columns="metric", values="token")

# %%
print("decoded (cosine):   ", repr("".join(pl.manifold.decode_prompt(prompt, E, strings))))
print("decoded (word-like):", repr("".join(pl.manifold.decode_prompt(prompt, E, strings, word_like=True))))
figures.nearest_token_heatmap(prompt, E, strings, k=5, stats=stats)

# %% [markdown]
# Is a decoded token meaningful? Every vector has *some* nearest token. `decoding_baseline` puts
# each best score next to random vectors of the same norm (the percent of them that are no nearer to
# their nearest token) and next to real tokens (the percent of tokens no nearer to their nearest
# other token). A vector that is not nearer than 95% of random vectors decodes to chance.

# %%
baseline = pl.manifold.decoding_baseline(prompt, E, stats)
pd.DataFrame({"decoded": pl.manifold.decode_prompt(prompt, E, strings), "best cosine": baseline.best,
              "% of random vectors no nearer": baseline.random_percentile,
              "% of tokens no nearer": baseline.token_percentile, "meaningful": baseline.meaningful}).round(3)

# %%
print(baseline.summary())
if not baseline.n_meaningful:
    print("So the decoded text above says nothing about this prompt: read it as noise, not as what the prompt means.")

# %% [markdown]
# ## 2. Snap to the vocabulary: is the decoding faithful?
#
# If the decoded tokens *were* the prompt, replacing each vector by its nearest token's embedding
# would keep the accuracy. `snap_report` measures the dev P@1 of the original and the snapped
# prompts.

# %%
dev_p_at_1 = lambda p: pl.evaluate(lm, template, task.dev, p)["p_at_1"]
report = pl.snap_report(dev_p_at_1, prompt, E, token_strings=strings)
print(f"trained prompt: dev P@1 {report['original']:.3f}")
pd.DataFrame({"dev P@1 snapped": report["snapped"], "drop": report["drop"],
              "decoded": {m: "".join(t) for m, t in report["tokens"].items()}}).round(3)

# %%
start_p1 = dev_p_at_1(result.snapshots[0].to(lm.device))
manual_dev = pl.evaluate(lm, task.template, task.dev)["p_at_1"]
cos_snap = report["snapped"]["cosine"]
print(f"Snapped by cosine, the prompt is the words {''.join(report['tokens']['cosine'])!r} and scores dev P@1 "
      f"{cos_snap:.3f}, against {report['original']:.3f} trained. Snapping throws away what the vectors encode "
      f"beyond their nearest token, and {baseline.n_meaningful} of {len(baseline.best)} vectors were nearer to it "
      f"than chance. What is left is text with words between 'is' and the answer, as at step 0: the "
      f"untrained start (also real words) scored {start_p1:.3f}, the manual prompt {manual_dev:.3f}.")

# %% [markdown]
# A snapped prompt is made of real rows of `E`, and snapping it again changes nothing:

# %%
# NBVAL_CHECK_OUTPUT
snapped, ids = pl.snap_to_vocab(prompt, E)
print(torch.equal(snapped, E[ids.to(E.device)]), torch.equal(pl.snap_to_vocab(snapped, E)[0], snapped))

# %% [markdown]
# ## 3. Waywardness
#
# Khashabi et al. (2022) showed that a continuous prompt can solve a task while its nearest tokens
# spell an arbitrary, unrelated text. We start the prompt **at** an unrelated sentence and train
# it for the task with a penalty `γ · mean ‖p_i − t_i‖²` that keeps it near that sentence's
# embeddings `t`: γ = 0 lets it wander, a large γ holds it on the text. For each γ: test P@1 and
# the word F1 between the decoded prompt and the sentence.
#
# Where does γ start to matter? A fixed list of γ can miss it. We train once with γ = 0 and
# measure how far the prompt wandered (`D0 = mean ‖p_i − t_i‖²`) and how much task loss it gained
# (`ΔL`, dev loss of the sentence itself minus the trained one's). The penalty balances the gain
# near `γ* = ΔL / D0`, so the sweep spans γ* / 100 to 10 γ*, which has to cross the trade-off.

# %%
target = "I like to eat green apples"
literal = pl.encoders.initial_prompt("text:" + target, 6, E, lm.tokenize).to(lm.device)
print(f"the sentence itself as the prompt: test P@1 {pl.evaluate(lm, template, task.test, literal)['p_at_1']:.3f}")

# %%
import numpy as np

def wayward_run(gamma):
    enc = pl.build_encoder("mlp", 6, E, init="text:" + target, tokenize=lm.tokenize, seed=0)
    config = pl.TrainConfig(waywardness_gamma=gamma, waywardness_target=target, **SIZE.train_kwargs(SIZE.sweep_steps))
    r = pl.Trainer(lm, enc, task, template, config, progress=False).fit()
    p = r.prompt.to(lm.device)
    decoded = pl.manifold.decode_prompt(p, E, strings)
    return {"gamma": gamma, "accuracy": pl.evaluate(lm, template, task.test, p)["p_at_1"],
            "f1": pl.decoded_f1(decoded, target), "decoded": "".join(decoded),
            "dev loss": pl.evaluate(lm, template, task.dev, p)["loss"],
            "distance²": float(pl.waywardness_penalty(p, literal))}

# %%
free = wayward_run(0.0)
gain = pl.evaluate(lm, template, task.dev, literal)["loss"] - free["dev loss"]
gamma_star = max(gain, 1e-6) / max(free["distance²"], 1e-12)
gammas = [float(f"{g:.2g}") for g in gamma_star * np.logspace(-2, 1, len(SIZE.gammas) - 1)]
print(f"γ = 0: D0 = {free['distance²']:.3g}, ΔL = {gain:.3f} -> γ* = {gamma_star:.3g}; sweeping γ over {gammas}")
sweep = [free] + [wayward_run(g) for g in gammas]
pd.DataFrame(sweep).round({"accuracy": 3, "f1": 3, "dev loss": 3, "distance²": 1})

# %%
figures.waywardness_sweep(sweep)

# %% [markdown]
# Move the slider: each position is a prompt trained above (training inside a slider would be too slow).

# %%
import ipywidgets as w

def show(gamma):
    row = next(r for r in sweep if r["gamma"] == gamma)
    print(f"γ = {gamma:g}: test P@1 {row['accuracy']:.3f}, decoded F1 vs the sentence {row['f1']:.2f}")
    print("the prompt reads:", repr(row["decoded"]))

w.interact(show, gamma=w.SelectionSlider(options=[r["gamma"] for r in sweep], value=sweep[-1]["gamma"], description="γ"));

# %%
n_test = len(task.test)
acc = np.array([r["accuracy"] for r in sweep])
f1 = np.array([r["f1"] for r in sweep])
noise = max(float(np.sqrt(acc.mean() * (1 - acc.mean()) / n_test)), 1 / n_test)   # sampling error of P@1
lost, kept = acc.max() - acc[f1.argmax()], f1.max() - f1[acc.argmax()]
if lost > 2 * noise and kept > 0.2:
    print(f"A real trade-off: holding the sentence (F1 {f1.max():.2f}) costs {lost:.3f} of test P@1 "
          f"({round(lost * n_test)} of {n_test} examples, more than twice the noise {noise:.3f}); the most accurate "
          f"prompt keeps F1 {f1[acc.argmax()]:.2f}.")
else:
    print(f"No trade-off beyond the noise at this scale: over γ from 0 to {max(gammas):.2g} test P@1 moves by "
          f"{acc.max() - acc.min():.3f} ({round((acc.max() - acc.min()) * n_test)} of {n_test} examples; noise "
          f"{noise:.3f}) while F1 moves by {f1.max() - f1.min():.2f}.")

# %%
literal_p1 = pl.evaluate(lm, template, task.test, literal)["p_at_1"]
held = [r for r in sweep if r["f1"] >= 0.8]
if held and max(r["accuracy"] for r in held) > literal_p1:
    r = max(held, key=lambda r: r["accuracy"])
    print(f"Wayward: at γ = {r['gamma']:g} the prompt still reads {r['decoded']!r} (F1 {r['f1']:.2f}) "
          f"yet scores {r['accuracy']:.3f} against {literal_p1:.3f} for the sentence itself.")
else:
    print("In this run no prompt both kept the sentence (F1 >= 0.8) and beat the sentence itself; "
          "try more steps (the lesson size) or other γ values.")

# %% [markdown]
# ## Exercises
#
# 1. Use a target sentence about the task, such as `"The capital city of the country"`. Does keeping it (high F1) cost less accuracy than the unrelated sentence?
# 2. Snap only the vectors that are already close to a token (cosine > 0.9) and keep the others. What is the dev P@1?
# 3. Compare the faithfulness of a `direct` prompt with the MLP's: train one and call `snap_report` on it.

# %% [markdown] tags=["solution"]
# ## Solutions
#
# Each code cell below is collapsed: click the bar at its left to open it. Try the exercise first;
# an instructor's `make handouts` writes a copy of every lesson without this section.
#
# **1.**

# %% tags=["solution"] jupyter={"source_hidden": true}
target = "The capital city of the country"

# %% [markdown] tags=["solution"]
# Then run the three cells of section 3 again.
#
# **2.**

# %% tags=["solution"] jupyter={"source_hidden": true}
near = pl.drift_metrics(prompt, E, stats).table["max_cosine"].to_numpy() > 0.9
mixed = prompt.clone()
mixed[torch.from_numpy(near)] = snapped[torch.from_numpy(near)]
print(near, dev_p_at_1(mixed))

# %% [markdown] tags=["solution"]
# **3.**

# %% tags=["solution"] jupyter={"source_hidden": true}
enc = pl.build_encoder("direct", 6, E, init=init, tokenize=lm.tokenize, seed=0)
r = pl.Trainer(lm, enc, task, template, pl.TrainConfig(**SIZE.train_kwargs()), progress=False).fit()
pl.snap_report(dev_p_at_1, r.prompt.to(lm.device), E, token_strings=strings)

# %% [markdown]
# **Next:** [06 · Classification with templates, anchors and verbalizers](06_nlu_with_verbalizers.ipynb)
