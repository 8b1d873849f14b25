"""`gptcli train`: text files -> tokenizer -> fresh model -> packed blocks -> engine -> model folder."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from gptcli.loading import context_length
from gptcli.training import presets, runner
from gptcli.training import tokenizer as toks
from gptcli.training.settings import TrainSettings


def run(s: TrainSettings, progress: bool = True) -> dict[str, Any]:
    ctx = runner.setup("train", s, progress)
    say = ctx.say
    data = runner.DataFiles.open(s)

    t0 = time.perf_counter()
    if ctx.resume_from is not None:  # the checkpoint's own tokenizer and config: the exact same model
        from transformers import AutoConfig

        from gptcli.loading import load_tokenizer

        tokenizer = load_tokenizer(ctx.resume_from, padding_side="right")
        config = AutoConfig.from_pretrained(ctx.resume_from)
        kind = "checkpoint"
    else:
        if s.tokenizer:
            tokenizer, kind = toks.load_existing(s.tokenizer, s.trust_remote_code), f"reused {s.tokenizer}"
        else:
            from gptcli import tokcache

            tokenizer = tokcache.cached_tokenizer(
                data.paths, s.text_field, s.tokenizer_type, s.vocab_size, int(s.tokenizer_sample_mb * 1e6), data.root
            )
            kind = s.tokenizer_type
        config = _model_config(s, tokenizer)
    context = context_length(config, tokenizer)
    block = s.block_size or context
    runner.check_block_size(block, context, "this model")
    say(f"tokenizer: {kind}, {len(tokenizer):,} tokens ({time.perf_counter() - t0:.1f} s)")

    t0 = time.perf_counter()
    entry = data.tokens(tokenizer, ctx)
    ids = entry.tokens()  # a numpy.memmap of the token cache: memory stays flat whatever the corpus size
    val_entry = data.val_tokens(tokenizer, ctx) if data.val_paths else None
    val_stream = (val_entry.tokens(), None) if val_entry is not None else None
    provenance = runner.provenance(ctx, [entry] + ([val_entry] if val_entry is not None else []))
    frac = 0.0 if val_stream is not None else runner.val_fraction(s, len(ids), block, say)
    train, val = runner.blocks(ids, None, block, frac, val_stream)
    say(f"data: {entry.n_documents:,} documents, {len(ids):,} tokens ({time.perf_counter() - t0:.1f} s)")

    model = presets.new_model(config, s.seed)
    s.block_size = block

    def write(m: Any, folder: Path, state_dict: Any = None) -> None:
        from gptcli.training.export import save_model_folder

        save_model_folder(m, tokenizer, folder, state_dict)

    return runner.execute(
        ctx,
        model=model,
        train=train,
        val=val,
        lr=s.lr or 1e-3,
        provenance=provenance,
        write_model=write,
        export=write,
        describe={
            "tokenizer": kind,
            "vocab_size": len(tokenizer),
            "model_type": config.model_type,
            "parameters": sum(p.numel() for p in model.parameters()),
            "block_size": block,
            "train_tokens": train.tokens,
            "val_tokens": val.tokens if val is not None else 0,
        },
    )


def _model_config(s: TrainSettings, tokenizer: Any) -> Any:
    vocab, eot = len(tokenizer), toks.eot_id(tokenizer)
    if s.model_config:
        return presets.config_from_json(s.model_config, vocab, eot)
    shape = presets.resolve_shape(
        s.preset, n_layer=s.n_layer, n_head=s.n_head, n_embd=s.n_embd, block_size=s.block_size, dropout=s.dropout
    )
    return presets.build_config(s.arch, shape, vocab, eot)
