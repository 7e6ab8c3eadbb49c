"""PEFT interoperability: export a ptuning_lab prompt as a Hugging Face PEFT adapter, import one back.

**What PEFT stores.** For P-tuning and prompt tuning, ``PeftModel.save_pretrained`` writes only
``prompt_embeddings`` -- the *computed* prompt ``(num_virtual_tokens, d)`` -- into
``adapter_model.safetensors``, never the encoder's weights. ``PeftModel.from_pretrained`` loads it
in inference mode, where P-tuning's encoder is not even built: ``get_prompt`` returns the saved
embeddings as they are (and PEFT refuses ``is_trainable=True`` for prompt-learning adapters). So a
PEFT adapter is fully described by the computed prompt, and that is what :func:`export_peft` saves.

**Config mapping** (``peft_type="auto"``):

- ``direct`` -> ``PromptTuningConfig``: the prompt is the parameter, in PEFT as in ptuning_lab.
- ``mlp`` with ``MLPConfig(num_layers=3, dropout=0.0, residual=False)`` -> ``PromptEncoderConfig(
  encoder_reparameterization_type="MLP", encoder_hidden_size=h)``: PEFT's MLP is exactly that
  network, parameter names included (PEFT ignores ``encoder_num_layers`` for the MLP; it is left at
  its default 2 so PEFT does not warn).
- ``lstm`` with ``residual=False`` -> ``PromptEncoderConfig(encoder_reparameterization_type="LSTM",
  encoder_hidden_size=h, encoder_num_layers=L, encoder_dropout=p)``. Our dropout also acts on the
  last LSTM layer's output during training; the prompt itself (eval mode) is the same.
- Anything PEFT's encoder cannot express -- the residual form ``x + f(x)`` (ptuning_lab's
  default), an MLP depth other than 3, MLP dropout -- is exported as a ``PromptTuningConfig``
  holding the computed prompt. PEFT's inference uses only that prompt, so the logits are the same;
  labelling it P-tuning would claim an encoder that is not in the file. ``ptuning_lab.json`` says
  which mapping was used and why.

For a P-tuning export the encoder's weights are also written, under PEFT's own parameter names
(``embedding.weight``, ``mlp_head.*``, ``lstm_head.*``), to ``ptuning_lab_encoder.safetensors``.
PEFT does not read that file; :func:`peft_model_for_training` loads it into a trainable PEFT model,
whose encoder then recomputes exactly our prompt -- the only way to continue training the
*encoder* (not just the prompt) in PEFT.

**Templates.** PEFT can only prepend the virtual tokens, so only templates whose ``[P]`` all come
first (``Template.is_prefix``) can be exported, e.g. ``"[P]*6 The capital of [X] is"``; the
others raise :class:`PeftExportError` (never a silently different model). The text after the
virtual tokens is the user's input to PEFT: ``" The capital of France is"`` for the template above
(the leading space matters). Templates with several slots export the same way (all ``[P]`` first,
e.g. ``"[P]*4 [premise] Question: [hypothesis] Answer:"``), each slot filled with its field's text.
ptuning_lab tokenizes the template's pieces separately; tokenizing the
whole text at once usually gives the same ids but not always (``" U.S.'s"``), so
:func:`peft_batch` builds PEFT's ``input_ids`` exactly as ptuning_lab does.

**Padding.** PEFT ignores ``position_ids`` (it warns and drops them): with left padding the text
positions shift and the logits change. Use one input at a time or right padding, as
:func:`peft_batch` does, and read the logits at ``logit_index``.

Example::

    >>> out = export_peft("runs/capital-mlp", "exports/capital-mlp")          # doctest: +SKIP
    >>> from peft import PeftModel                                             # doctest: +SKIP
    >>> peft_model = PeftModel.from_pretrained(lm.model, out)                   # doctest: +SKIP
    >>> b = peft_batch(lm, "[P]*6 The capital of [X] is", ["France"])          # doctest: +SKIP
    >>> logits = peft_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    >>> imported = import_peft("some/peft-adapter", lm)                        # doctest: +SKIP
    >>> imported.prompt.shape                                                  # doctest: +SKIP
    torch.Size([20, 576])
"""
from .common import (CONFIG_FILE, ENCODER_FILE, EXAMPLE_TEMPLATE, EXPORT_FORMAT, IMPORTABLE, INFO_FILE, PEFT_TYPES,
                     WEIGHTS_FILE, PeftExportError, PeftImportError, peft_batch, peft_input_format, peft_input_text)
from .export import _default_base, export_peft, peft_model_for_training  # noqa: F401 (_default_base: the CLI)
from .importing import ImportedPrompt, import_peft, save_imported

__all__ = ["CONFIG_FILE", "ENCODER_FILE", "EXAMPLE_TEMPLATE", "EXPORT_FORMAT", "IMPORTABLE", "INFO_FILE", "PEFT_TYPES",
           "WEIGHTS_FILE", "PeftExportError", "PeftImportError", "peft_batch", "peft_input_format", "peft_input_text",
           "export_peft", "peft_model_for_training", "ImportedPrompt", "import_peft", "save_imported"]
