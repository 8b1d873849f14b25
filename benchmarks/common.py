"""Shared helpers for the benchmark scripts: local GPT-2-124M- and Llama-shaped models (random weights)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def peak_rss_mb() -> float:
    """Peak resident memory of this process alone (ru_maxrss would include the parent's at fork)."""
    from gptcli.generation import peak_rss_bytes

    return peak_rss_bytes() / 2**20


def build_gpt2_124m(
    folder: Path, vocab_text: Path | str | None = None, seed: int = 0, vocab_size: int | None = 50257
) -> Path:
    """GPT-2 small's shape (12 layers, 12 heads, 768 wide, 1024 context), random weights.

    The tokenizer is a byte-level BPE trained locally on `vocab_text` (8k entries). The model's
    vocabulary is GPT-2's 50,257 (ids beyond the tokenizer decode to nothing, which is fine for
    speed), or the tokenizer's own size with `vocab_size=None`.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    folder = Path(folder)
    if (folder / "model.safetensors").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=8192, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    if isinstance(vocab_text, str):  # the text itself
        tok.train_from_iterator(vocab_text.splitlines(), trainer)
    else:
        tok.train([str(vocab_text or SHARED / "tinyshakespeare.txt")], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=12,
        n_head=12,
        n_embd=768,
        vocab_size=vocab_size or len(fast),
        n_positions=1024,
        bos_token_id=0,
        eos_token_id=0,
    )
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def emit(result: dict) -> None:
    print("RESULT " + json.dumps(result), flush=True)


def parse_result(stdout: str) -> dict:
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError("worker printed no result:\n" + stdout)


LLAMA_SHAPES = {
    # ~91 M: 12 layers, 768 wide, 12 heads, SwiGLU 2048 (the shape)
    "llama-91m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12),
    # TinyLlama-1.1B's shape (22 layers, 2048 wide, 32 heads in 4 key/value groups, SwiGLU 5632) with
    # the bundled tokenizer's 4,096 entries instead of 32,000: ~1.0 B parameters, a model of real size
    "llama-1b": dict(
        hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4
    ),
}


def build_llama(folder: Path, shape: str = "llama-91m", seed: int = 0) -> Path:
    """A Llama of one of LLAMA_SHAPES, random weights in bfloat16, the bundled tokenizer (vocab
    4,096), untied head."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (folder / "model.safetensors").exists() or (folder / "model.safetensors.index.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    bundled = Path(__file__).resolve().parent.parent / "gptcli" / "bundled" / "tinystories"
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(bundled / name, folder / name)
    config = LlamaConfig(
        **{"num_key_value_heads": LLAMA_SHAPES[shape]["num_attention_heads"], **LLAMA_SHAPES[shape]},
        vocab_size=4096,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():  # what LlamaForCausalLM's init draws: normal(0, 0.02), norms at 1
        for p in model.parameters():
            if p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, config.initializer_range)
    model.save_pretrained(folder)
    return folder
