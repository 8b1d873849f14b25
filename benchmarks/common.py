"""Shared helpers for the benchmark scripts: local GPT-2-124M-shaped models (random weights)."""

from __future__ import annotations

import json
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
