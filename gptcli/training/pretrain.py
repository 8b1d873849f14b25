"""`gptcli train`: text files -> tokenizer -> fresh model -> packed blocks -> engine -> model folder."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from gptcli import console
from gptcli.training import outdir, packing, presets, runner
from gptcli.training import tokenizer as toks
from gptcli.training.settings import TrainSettings


def run(s: TrainSettings, progress: bool = True) -> dict[str, Any]:
    from gptcli.loading import quiet_transformers
    from gptcli.runtime import resolve_runtime, seed_everything
    from gptcli.training.precision import mixed_precision

    quiet_transformers()
    runtime = resolve_runtime(s.device, "float32", s.threads, purpose="training")
    mixed_precision(s.precision, runtime.device.type)  # an impossible --precision fails before any work
    out = Path(s.out).expanduser()
    outdir.check(out, resume=s.resume is not None, overwrite=s.overwrite, main=runner.is_main())
    resume_from, resume_state = runner.resume_point(s)
    seed_everything(s.seed)
    say = console.info if progress and runner.is_main() else (lambda _m: None)

    texts = runner.load_texts(s.data, s.text_field)
    val_texts = runner.load_texts(s.val_data, s.text_field, "validation data") if s.val_data else None
    provenance = runner.provenance(s, resume_from, resume_state)

    t0 = time.perf_counter()
    if resume_from is not None:  # the checkpoint's own tokenizer and config: the exact same model
        from transformers import AutoConfig

        from gptcli.loading import load_tokenizer

        tokenizer = load_tokenizer(resume_from, padding_side="right")
        config = AutoConfig.from_pretrained(resume_from)
        kind = "checkpoint"
    else:
        if s.tokenizer:
            tokenizer, kind = toks.load_existing(s.tokenizer, s.trust_remote_code), f"reused {s.tokenizer}"
        else:
            tokenizer, kind = toks.make_tokenizer(s.tokenizer_type, texts, s.vocab_size), s.tokenizer_type
        config = _model_config(s, tokenizer)
    eot = toks.eot_id(tokenizer)
    block = s.block_size or presets.context_length(config)
    runner.check_block_size(block, presets.context_length(config), "this model")
    say(f"tokenizer: {kind}, {len(tokenizer):,} tokens ({time.perf_counter() - t0:.1f} s)")

    t0 = time.perf_counter()
    ids, _ = packing.stream(toks.encode_documents(tokenizer, texts), eot)
    if val_texts is not None:
        train = packing.split(ids, None, 0.0, block)[0]
        val_ids, _ = packing.stream(toks.encode_documents(tokenizer, val_texts), eot)
        val = packing.Blocks(val_ids, None, block)
        if len(val) < 1:
            from gptcli.errors import InputError

            raise InputError(f"the validation data ({len(val_ids):,} tokens) is smaller than one block of {block + 1} tokens.")
    else:
        train, val = packing.split(ids, None, runner.val_fraction(s, len(ids), block, say), block)
    say(f"data: {len(texts):,} documents, {len(ids):,} tokens ({time.perf_counter() - t0:.1f} s)")

    model = presets.new_model(config, s.seed)
    s.block_size = block

    def write(m: Any, folder: Path, state_dict: Any = None) -> None:
        from gptcli.training.export import save_model_folder

        save_model_folder(m, tokenizer, folder, state_dict)

    return runner.execute(
        "train", s, model=model, train=train, val=val, lr=s.lr or 1e-3,
        resume_from=resume_from, resume_state=resume_state, provenance=provenance, write_model=write, export=write,
        progress=progress,
        describe={"tokenizer": kind, "vocab_size": len(tokenizer), "model_type": config.model_type,
                  "parameters": sum(p.numel() for p in model.parameters()), "block_size": block,
                  "train_tokens": train.tokens, "val_tokens": val.tokens if val is not None else 0},
    )


def _model_config(s: TrainSettings, tokenizer: Any) -> Any:
    vocab, eot = len(tokenizer), toks.eot_id(tokenizer)
    if s.model_config:
        return presets.config_from_json(s.model_config, vocab, eot)
    shape = presets.resolve_shape(s.preset, n_layer=s.n_layer, n_head=s.n_head, n_embd=s.n_embd,
                                  block_size=s.block_size, dropout=s.dropout)
    return presets.build_config(s.arch, shape, vocab, eot)
