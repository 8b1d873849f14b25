"""Model size presets and building a transformers config from them.

A preset fixes depth, width, heads and context; every knob can be overridden
on the command line. The configs use the faster choices on CPU: exact GELU
instead of the tanh approximation, SDPA attention, tied input/output embeddings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gptcli.errors import UsageError

# name: (n_layer, n_head, n_embd, block_size, dropout) -- parameter counts at vocab 8,192.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(n_layer=2, n_head=2, n_embd=64, block_size=128, dropout=0.0),  # ~0.6 M: seconds, for tests
    "micro": dict(n_layer=4, n_head=4, n_embd=128, block_size=256, dropout=0.0),  # ~1.8 M: minutes on a laptop CPU
    "mini": dict(n_layer=4, n_head=4, n_embd=256, block_size=256, dropout=0.0),  # ~5.3 M: the bundled TinyStories size
    "small": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.1),  # ~13.8 M: nanoGPT shakespeare size
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, dropout=0.0),  # GPT-2 124M shape (at vocab 50,257)
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024, dropout=0.0),  # 350M shape
}


def resolve_shape(preset: str, **overrides: Any) -> dict[str, Any]:
    shape = dict(PRESETS[preset])
    shape.update({k: v for k, v in overrides.items() if v is not None})
    if shape["n_embd"] % shape["n_head"]:
        raise UsageError(
            f"n-embd ({shape['n_embd']}) must be a multiple of n-head ({shape['n_head']}).",
            hint="Set --n-head or --n-embd so that the width divides evenly into heads.",
        )
    return shape


def build_config(arch: str, shape: dict[str, Any], vocab_size: int, eot_id: int) -> Any:
    """A transformers config for a fresh model; bos/eos/pad are the real end-of-text id."""
    specials: dict[str, Any] = {"bos_token_id": eot_id, "eos_token_id": eot_id, "pad_token_id": eot_id}
    if arch == "gpt2":
        from transformers import GPT2Config

        p = shape["dropout"]
        return GPT2Config(
            vocab_size=vocab_size,
            n_positions=shape["block_size"],
            n_embd=shape["n_embd"],
            n_layer=shape["n_layer"],
            n_head=shape["n_head"],
            activation_function="gelu",  # exact GELU is one fused op; gelu_new is several
            resid_pdrop=p,
            embd_pdrop=p,
            attn_pdrop=p,
            tie_word_embeddings=True,
            **specials,
        )
    if arch == "llama":
        from transformers import LlamaConfig

        width = shape["n_embd"]
        hidden = 32 * round(8 * width / 3 / 32) or 32  # SwiGLU's 8/3 ratio, rounded for fast matmuls
        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=width,
            intermediate_size=hidden,
            num_hidden_layers=shape["n_layer"],
            num_attention_heads=shape["n_head"],
            num_key_value_heads=shape["n_head"],
            max_position_embeddings=shape["block_size"],
            attention_dropout=shape["dropout"],
            tie_word_embeddings=True,
            **specials,
        )
    raise UsageError(f"unknown architecture '{arch}'.")


def config_from_json(path: str, vocab_size: int, eot_id: int) -> Any:
    """A full transformers config JSON (`--model-config`); vocab and special ids follow the tokenizer."""
    from transformers import AutoConfig

    file = Path(path).expanduser()
    if not file.is_file():
        raise UsageError(f"--model-config '{path}' does not exist.")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"--model-config {path} is not valid JSON: {exc}.") from exc
    model_type = raw.pop("model_type", None) if isinstance(raw, dict) else None
    if not model_type:
        raise UsageError(f'--model-config {path} has no "model_type" (e.g. "gpt2" or "llama").')
    try:
        config = AutoConfig.for_model(model_type, **raw)
    except (ValueError, KeyError) as exc:
        raise UsageError(f"--model-config {path}: {str(exc).splitlines()[0]}") from exc
    config.vocab_size = vocab_size
    config.bos_token_id = config.eos_token_id = config.pad_token_id = eot_id
    return config


def new_model(config: Any, seed: int) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)  # the initial weights depend only on the seed
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
