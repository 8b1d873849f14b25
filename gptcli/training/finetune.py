"""`gptcli finetune`: any loadable model -> (LoRA) -> masked, packed data -> engine -> model or adapter folder."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from gptcli.errors import InputError
from gptcli.training import lora as lora_mod
from gptcli.training import packing, runner, sft
from gptcli.training.settings import DEFAULT_VAL_SPLIT, TrainSettings

DEFAULT_MAX_BLOCK = 1024


def run(s: TrainSettings, progress: bool = True) -> dict[str, Any]:
    from gptcli.loading import load_model, resolve_source

    ctx = runner.setup("finetune", s, progress)
    say = ctx.say
    fmt = sft.detect_format(s.data, s.format)

    t0 = time.perf_counter()
    source = resolve_source(s.model, allow_pickle=s.allow_pickle)
    lm = load_model(
        s.model, ctx.runtime, allow_pickle=s.allow_pickle, trust_remote_code=s.trust_remote_code, for_training=True
    )
    if lm.is_encoder_decoder:
        raise InputError(f"finetune trains decoder-only (causal) models; '{lm.name}' is an encoder-decoder model.")
    model, tok = lm.model, lm.tokenizer
    if lm.is_adapter:  # finetuning an adapter folder: start from base + adapter merged
        model = model.merge_and_unload()
    tok.padding_side = "right"
    if tok.eos_token_id is None:
        raise InputError(f"the tokenizer of '{lm.name}' has no end-of-text (eos) token to separate examples.")
    say(f"model: {lm.name} ({model.config.model_type}) loaded in {time.perf_counter() - t0:.1f} s")
    if s.dropout is not None:
        set_dropout(model, s.dropout)

    val_fmt = sft.detect_format(s.val_data, fmt) if s.val_data else None
    entries = []  # token cache entries read: run.json takes their files' hashes from them
    if fmt == "text":  # plain text: through the token cache (memmap), as train reads it
        data = runner.DataFiles.open(s)
        entry = data.tokens(tok, ctx)
        entries.append(entry)
        n_examples, ids, mask = entry.n_documents, entry.tokens(), None
    else:  # prompt/completion and chat examples carry a loss mask per token: built in memory
        examples, masks = sft.build(tok, s.data, fmt, s.text_field)
        n_examples, (ids, mask) = len(examples), packing.stream(examples, tok.eos_token_id, masks)
    val_stream = None
    if s.val_data and val_fmt == "text" and fmt == "text":
        entries.append(data.val_tokens(tok, ctx))
        val_stream = (entries[-1].tokens(), None)
    elif s.val_data:
        assert val_fmt is not None  # detected above whenever there is validation data
        v_examples, v_masks = sft.build(tok, s.val_data, val_fmt, s.text_field)
        val_stream = packing.stream(v_examples, tok.eos_token_id, v_masks)
    provenance = runner.provenance(ctx, entries)
    if val_stream is not None:
        frac = 0.0
        block = _block_size(s, lm.context_length, len(ids), frac)
    else:
        block = _block_size(s, lm.context_length, len(ids), DEFAULT_VAL_SPLIT if s.val_split is None else s.val_split)
        frac = runner.val_fraction(s, len(ids), block, say)
        if frac == 0.0 and s.val_split is None:  # no validation after all: size the blocks for training only
            block = _block_size(s, lm.context_length, len(ids), frac)
    train, val = runner.blocks(ids, mask, block, frac, val_stream)
    too_big = packing.max_token_id(ids)
    if too_big >= model.get_input_embeddings().num_embeddings:
        raise InputError(f"token id {too_big} is outside the model's vocabulary; tokenizer and model do not match.")
    say(f"data: {n_examples:,} {fmt} examples, {len(ids):,} tokens, blocks of {block}")

    # What adapter_config.json records as the base: a Hub id as given; otherwise the folder's absolute path
    # (a bundled model's too), so that peft alone (AutoPeftModelForCausalLM) finds the base.
    base_name = source.spec if source.kind == "hub" else str(source.path)
    if s.lora:
        model = lora_mod.wrap(
            model, r=s.lora_r, alpha=s.lora_alpha, dropout=s.lora_dropout, targets=s.lora_targets, base_name=base_name
        )
    model.train()
    s.block_size = block

    def write(
        m: Any, folder: Path, state_dict: Any = None
    ) -> None:  # checkpoints: adapter or full model, plus tokenizer
        from gptcli.training.export import save_model_folder

        if s.lora:  # never sharded: --fsdp refuses --lora
            # gptcli never resizes the vocabulary, so the base's embeddings stay valid; peft's "auto" would
            # look the base up (on the Hub, for a name) at every save to find out, and warn when it cannot
            m.save_pretrained(folder, safe_serialization=True, save_embedding_layers=False)
            tok.save_pretrained(folder)
        else:
            save_model_folder(m, tok, folder, state_dict)

    def export(m: Any, folder: Path, state_dict: Any = None) -> None:
        from gptcli.training.export import save_model_folder

        if s.lora and s.merge:
            save_model_folder(m.merge_and_unload(), tok, folder)
        else:
            write(m, folder, state_dict)

    lr = s.lr or (2e-4 if s.lora else 1e-4)
    return runner.execute(
        ctx,
        model=model,
        train=train,
        val=val,
        lr=lr,
        provenance=provenance,
        write_model=write,
        export=export,
        describe={
            "base_model": base_name,
            "format": fmt,
            "lora": s.lora,
            "block_size": block,
            "train_tokens": train.tokens,
            "val_tokens": val.tokens if val is not None else 0,
        },
    )


def _block_size(s: TrainSettings, context: int, n_tokens: int, val_fraction: float) -> int:
    """--block-size as given (checked against the context), else the context capped at 1024,
    shrunk to fit small datasets so a few hundred examples still make blocks."""
    if s.block_size is not None:
        runner.check_block_size(s.block_size, context, "the base model")
        return s.block_size
    block = min(context, DEFAULT_MAX_BLOCK)
    train_tokens = int(n_tokens * (1 - val_fraction))
    val_tokens = n_tokens - train_tokens
    while block > 16 and (train_tokens - 1 < block * 4 or (val_fraction > 0 and val_tokens - 1 < block)):
        block //= 2
    return block


# Config keys that hold a dropout probability of the model's own layers (GPT-2, Llama-family,
# BERT-style and generic names); classifier and LoRA dropouts are not among them.
DROPOUT_KEYS = (
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "attention_dropout",
    "hidden_dropout",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "dropout",
)


def set_dropout(model: Any, p: float) -> None:
    """Set every dropout of the model's own layers to p, and record it in its config.

    The layers read their probability when they are built (`nn.Dropout`) or from an attribute
    at each call (attention dropout), so both are changed in place on the loaded model."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
        elif type(getattr(module, "attention_dropout", None)) in (int, float):
            module.attention_dropout = p
    for key in DROPOUT_KEYS:
        if type(getattr(model.config, key, None)) in (int, float):
            setattr(model.config, key, p)
