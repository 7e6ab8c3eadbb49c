"""What can be shown of a prefix-tuning prompt: per-layer norms, not nearest tokens.

A K/V prefix lives in each layer's key/value space, not in the vocabulary's embedding space, so
nearest tokens, the vocabulary map and waywardness do not apply (:data:`NOT_IN_VOCAB_SPACE` says so
to a user); :func:`prefix_norms`, :func:`prefix_norm_table` and :func:`format_prefix_norms` show
the prefix's size per layer, key/value and virtual token instead.
"""
from __future__ import annotations

import torch

from .prefix import METHOD, Geometry, PrefixEncoder, PrefixKV

NOT_IN_VOCAB_SPACE = (
    "a prefix-tuning run has no vectors in the vocabulary's embedding space: its virtual tokens are "
    "key/value pairs inside every attention layer, so nearest tokens, the vocabulary map and waywardness "
    "do not apply. Look at the per-layer prefix norms instead (ptuning_lab.prefix.prefix_norms).")


def _as_prefix(obj, geometry: Geometry | None = None) -> PrefixKV:
    """A PrefixKV from a PrefixKV, a PrefixEncoder, a TrainResult, a prefix run (``Run``) or a flat tensor +
    geometry."""
    if isinstance(obj, PrefixKV):
        return obj
    if isinstance(getattr(obj, "prompt", None), PrefixKV):            # a TrainResult
        return obj.prompt
    if isinstance(obj, PrefixEncoder):
        with torch.no_grad():
            return obj().detach()
    if isinstance(getattr(obj, "config", None), dict) and isinstance(getattr(obj, "prompt", None), torch.Tensor):
        return prefix_from_run(obj)                                      # a loaded Run
    if isinstance(obj, torch.Tensor) and obj.dim() == 5:
        return PrefixKV(obj)
    if isinstance(obj, torch.Tensor) and geometry is not None:
        return PrefixKV.from_tensor(obj, geometry)
    raise TypeError(f"expected a PrefixKV, a PrefixEncoder, a prefix run or a (layers, 2, heads, n, head_dim) "
                    f"tensor, got {type(obj).__name__}.")


def prefix_from_run(run) -> PrefixKV:
    """The trained prefix of a loaded prefix-tuning ``Run`` (its stored flat prompt, reshaped)."""
    enc = run.config.get("encoder", {})
    if enc.get("method") != METHOD:
        raise ValueError(f"the run at {getattr(run, 'path', '?')} trained method {enc.get('method')!r}, not "
                         f"'prefix'; its prompt is run.prompt (n, d).")
    geometry = Geometry(int(enc["num_layers"]), int(enc["num_kv_heads"]), int(enc["head_dim"]))
    return PrefixKV.from_tensor(run.prompt, geometry)


@torch.no_grad()
def prefix_norms(prefix) -> torch.Tensor:
    """Per-layer size of a prefix: ``(num_layers,)``, the root-mean-square L2 norm of its key and
    value vectors (one vector = one head of one virtual token), float32 on the CPU.

    ``prefix``: a :class:`PrefixKV`, a :class:`PrefixEncoder`, a ``TrainResult`` or a loaded prefix run.
    """
    kv = _as_prefix(prefix).kv.float().cpu()                         # (L, 2, H, n, hd)
    return kv.norm(dim=-1).pow(2).mean(dim=(1, 2, 3)).sqrt()


@torch.no_grad()
def prefix_norm_table(prefix) -> list[dict]:
    """One row per (layer, keys/values, virtual token): the RMS over heads of the vector norms.

    Rows: ``{"layer", "kind" ("key"|"value"), "virtual_token", "norm"}`` -- a tidy table for a
    heatmap (e.g. ``pandas.DataFrame(rows).pivot_table(...)``) or for comparing a trained prefix
    with the untrained model's own activations.
    """
    kv = _as_prefix(prefix).kv.float().cpu()
    norms = kv.norm(dim=-1).pow(2).mean(dim=2).sqrt()                # (L, 2, n)
    return [{"layer": layer, "kind": ("key", "value")[j], "virtual_token": t, "norm": float(norms[layer, j, t])}
            for layer in range(norms.shape[0]) for j in range(2) for t in range(norms.shape[2])]


def format_prefix_norms(prefix, width: int = 40) -> str:
    """A plain-text bar chart of :func:`prefix_norms`, one line per layer (for the CLI)."""
    norms = prefix_norms(prefix)
    top = float(norms.max()) or 1.0
    lines = [f"per-layer prefix norms (RMS L2 norm of the key/value vectors, {len(norms)} layers):"]
    for layer, value in enumerate(norms.tolist()):
        lines.append(f"  layer {layer:>3}  {value:>9.3f}  " + "#" * max(1, round(width * value / top)))
    return "\n".join(lines)


__all__ = ["NOT_IN_VOCAB_SPACE", "prefix_from_run", "prefix_norms", "prefix_norm_table", "format_prefix_norms"]
