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
# # 03 · P-tuning: MLP and LSTM prompt encoders
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ptuning-lab/ptuning_lab/blob/main/notebooks/03_p_tuning_encoders.ipynb) [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/ptuning-lab/ptuning_lab/main?labpath=notebooks%2F03_p_tuning_encoders.ipynb)
#
# **What you will learn**
#
# - how P-tuning reparameterises the prompt: `prompt = x + f(x)` with `f` an MLP or a bidirectional LSTM (Liu et al. 2021);
# - what the encoder adds: every virtual token's update depends on the others; and what it costs in parameters;
# - training both encoders and following their trajectories on one shared vocabulary map.
#
# Part 3 of 7 of the ptuning_lab course. The model is `auto`: GPT-2 where it can be
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
# ## 1. Three encoders, one interface
#
# Each prompt encoder's `forward()` takes no input and returns the `(6, d)` prompt.
# `direct` returns its parameter; `mlp` and `lstm` pass learnable inputs `x` through a network
# `f` and add them back (`x + f(x)`, with `f`'s last layer starting at zero), so all three start
# at exactly the same prompt: the init's words ("The capital of" before, "is" after).

# %%
encoders = {m: pl.build_encoder(m, 6, E, init=init, tokenize=lm.tokenize, seed=0) for m in ("direct", "mlp", "lstm")}
pd.DataFrame({"trainable parameters": {m: e.num_trainable_parameters() for m, e in encoders.items()},
              "x the direct prompt": {m: e.num_trainable_parameters() / (6 * lm.hidden_size) for m, e in encoders.items()}})

# %%
print(encoders["lstm"])

# %% [markdown]
# The same starting prompt, and the MLP's size from its layers (`Linear(d, d)` twice, plus the inputs `x`):

# %%
# NBVAL_CHECK_OUTPUT
start, d = encoders["direct"]().detach(), lm.hidden_size
print([torch.allclose(e().detach(), start) for e in encoders.values()])
print(encoders["mlp"].num_trainable_parameters() == 6 * d + 2 * (d * d + d))

# %% [markdown]
# ## 2. What the encoder adds: coupled updates
#
# Take one gradient step on a loss that looks at virtual token 0 only. With `direct`, only row 0
# moves. Through an MLP or an LSTM, the shared weights move every virtual token: the prompt is
# learned as a whole, which Liu et al. found more stable than free vectors.

# %%
import copy
for m, enc in encoders.items():
    e = copy.deepcopy(enc)
    before = e().detach().clone()          # direct returns its parameter: copy it
    e()[0].square().sum().backward()                       # a loss on virtual token 0 only
    torch.optim.SGD(e.parameters(), lr=1e-3).step()
    moved = (e().detach() - before).norm(dim=1)
    print(f"{m:<7} distance moved per virtual token:", " ".join(f"{v:.4f}" for v in moved))

# %% [markdown]
# ## 3. Training both
#
# The same task, template, starting point and budget for both encoders.

# %%
stats = pl.vocab_stats(E, lm.name, subset=SIZE.stats_subset)                # cached after the first call
projection = pl.fit_projection(E, strings, lm.name, subset=SIZE.map_subset)  # one PCA map for every run

# %%
results = {}
for m in ("mlp", "lstm"):
    results[m] = pl.Trainer(lm, encoders[m], task, template, pl.TrainConfig(**SIZE.train_kwargs()),
                            progress=False).fit()
    print(f"{m:<5} best dev P@1 {results[m].best_dev['p_at_1']:.3f} at step {results[m].best_step} "
          f"({results[m].seconds:.0f} s)")

# %%
figures.training_curves({m: [r.history] for m, r in results.items()})

# %%
manual = pl.evaluate(lm, task.template, task.test)["p_at_1"]
test = {m: pl.evaluate(lm, template, task.test, r.prompt.to(lm.device))["p_at_1"] for m, r in results.items()}
print(f"test P@1: manual {manual:.3f}, " + ", ".join(f"{m} {v:.3f}" for m, v in test.items()))

# %% [markdown]
# ## 4. Trajectories on the shared map
#
# Both runs start at the same points (open circles). Use the slider or ▶ to follow training; hover
# a vector for its nearest tokens. The dashboard below lets you pick a run, a step and a virtual
# token, and shows that token's neighbours.

# %%
figures.vocab_map(projection, results, strings, E, max_vocab_points=SIZE.map_points)

# %%
widgets.RunDashboard(results, projection, E, strings).widget

# %%
drift = pd.concat({m: pl.drift_metrics(r.prompt, E, stats, strings).table for m, r in results.items()})
drift[["norm_ratio", "nearest_token", "max_cosine", "nn_l2_ratio"]].round(3)

# %% [markdown]
# After training, the encoder has done its job: the prompt it outputs is all the model needs, and
# the encoder can be thrown away (the run directory keeps both, so training can resume).

# %% [markdown]
# ## Exercises
#
# 1. Make the LSTM small: `config=pl.LSTMConfig(num_layers=1, encoder_hidden_size=64)`. How many parameters are left, and how does it train?
# 2. Build the MLP in PEFT's form, `config=pl.MLPConfig(residual=False)`. Where does its prompt start? Decode `encoder()` before training.
# 3. Add a `direct` run to the map and to the dashboard.

# %% [markdown] tags=["solution"]
# ## Solutions
#
# Each code cell below is collapsed: click the bar at its left to open it. Try the exercise first;
# an instructor's `make handouts` writes a copy of every lesson without this section.
#
# **1.**

# %% tags=["solution"] jupyter={"source_hidden": true}
small = pl.build_encoder("lstm", 6, E, init=init, tokenize=lm.tokenize, seed=0,
                         config=pl.LSTMConfig(num_layers=1, encoder_hidden_size=64))
print(small.num_trainable_parameters())
r = pl.Trainer(lm, small, task, template, pl.TrainConfig(**SIZE.train_kwargs()), progress=False).fit()
print(r.best_dev)

# %% [markdown] tags=["solution"]
# **2.**

# %% tags=["solution"] jupyter={"source_hidden": true}
peft_like = pl.build_encoder("mlp", 6, E, init=init, tokenize=lm.tokenize, seed=0,
                             config=pl.MLPConfig(residual=False))
print(pl.manifold.decode_prompt(peft_like(), E, strings))
print(pl.drift_metrics(peft_like().detach(), E, stats).table[["norm_ratio", "max_cosine"]])

# %% [markdown] tags=["solution"]
# Without the residual form the initial prompt is `f(x)` of a randomly initialised network: it is
# not the init text and sits far from every token.
#
# **3.**

# %% tags=["solution"] jupyter={"source_hidden": true}
results["direct"] = pl.Trainer(lm, encoders["direct"], task, template, pl.TrainConfig(**SIZE.train_kwargs()),
                               progress=False).fit()
widgets.RunDashboard(results, projection, E, strings).widget

# %% [markdown]
# **Next:** [04 · MLP vs LSTM vs direct: the comparison, with seeds](04_mlp_vs_lstm_vs_direct.ipynb)
