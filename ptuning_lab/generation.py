"""Text generation with the KV cache from a templated input: greedy or sampling (used by :meth:`FrozenLM.generate`).

Virtual tokens at [P] slots go in as input embeddings; a K/V prefix (prefix tuning) starts the cache
and shifts the positions by its length, exactly as in :meth:`FrozenLM.hidden`.
"""
from __future__ import annotations

import torch

from .prompts import LayerPrompt


@torch.no_grad()
def generate(lm, template, input_text="", prompt=None, max_new_tokens: int = 20, do_sample: bool = False,
             temperature: float = 1.0, top_k: int | None = None, seed: int | None = None,
             use_cache: bool = True) -> str:
    """The text ``lm`` writes after ``template`` filled with ``input_text`` (see :meth:`FrozenLM.generate`)."""
    batch = lm.encode(template, [input_text])
    if lm.model.training:                 # the frozen model never uses dropout
        lm.model.eval()
    # a K/V prefix (prefix tuning) starts every cache and shifts the positions by its length
    prefix = prompt if isinstance(prompt, LayerPrompt) else None
    if prefix is not None:
        prefix.check_batch(batch)
    embeds = lm.embed(batch, None if prefix is not None else prompt)
    offset = prefix.num_virtual_tokens if prefix is not None else 0
    gen = torch.Generator(device="cpu").manual_seed(seed) if seed is not None else None
    new_ids: list[int] = []
    past = prefix.cache(lm) if prefix is not None else None
    step_embeds = embeds
    for step in range(max_new_tokens):
        T = embeds.shape[1] + step if use_cache else step_embeds.shape[1]
        if use_cache:
            pos = torch.arange(T - step_embeds.shape[1], T, device=embeds.device).unsqueeze(0) + offset
            out = lm.model(inputs_embeds=step_embeds, position_ids=pos, use_cache=True,
                             logits_to_keep=1, **{lm._cache_arg: past})
            past = getattr(out, lm._cache_arg, None) or out.past_key_values
        else:
            pos = torch.arange(T, device=embeds.device).unsqueeze(0) + offset
            fresh = {lm._cache_arg: prefix.cache(lm)} if prefix is not None else {}
            out = lm.model(inputs_embeds=step_embeds, position_ids=pos, use_cache=False, logits_to_keep=1,
                             **fresh)
        logits = out.logits[0, -1].float()
        if do_sample:
            logits = logits / max(temperature, 1e-5)
            if top_k:
                kth = logits.topk(top_k).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            next_id = int(torch.multinomial(logits.softmax(-1).cpu(), 1, generator=gen))
        else:
            next_id = int(logits.argmax())
        new_ids.append(next_id)
        if next_id == lm.tokenizer.eos_token_id:
            break
        tok_embed = lm.model.get_input_embeddings()(torch.tensor([[next_id]], device=embeds.device))
        step_embeds = tok_embed if use_cache else torch.cat([step_embeds, tok_embed], dim=1)
    return lm.tokenizer.decode(new_ids)
