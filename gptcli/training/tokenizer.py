"""Tokenizers for training from scratch: trained byte-level BPE, characters, or raw bytes.

All three are `tokenizers` objects wrapped in `PreTrainedTokenizerFast`, so the
output folder loads with `AutoTokenizer` like any Hub model. The end-of-text
token separates documents and is the model's bos/eos/pad token.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gptcli.errors import ModelLoadError

EOT = "<|endoftext|>"


def _wrap(tok: Any) -> Any:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOT, bos_token=EOT, unk_token=EOT, pad_token=EOT)
    fast.model_max_length = 1 << 30  # the model config holds the real context
    return fast


def train_bpe(texts: Iterable[str], vocab_size: int) -> Any:
    """Byte-level BPE (GPT-2 style): every string encodes, no unknown tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    return _wrap(tok)


def build_char(texts: Iterable[str]) -> Any:
    """One token per character seen in the data (nanoGPT's shakespeare-char)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    chars: set[str] = set()
    for t in texts:
        chars.update(t)
    vocab = {EOT: 0}
    for ch in sorted(chars):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token=EOT))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character, newlines too
    tok.decoder = decoders.Fuse()
    return _wrap(tok)


def build_bytes() -> Any:
    """256 byte tokens plus end-of-text: no training, any text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {EOT: 0}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return _wrap(tok)


def make_tokenizer(kind: str, texts: list[str], vocab_size: int) -> Any:
    if kind == "char":
        return build_char(texts)
    if kind == "bytes":
        return build_bytes()
    return train_bpe(texts, vocab_size)


def load_existing(spec: str, trust_remote_code: bool = False) -> Any:
    """`--tokenizer PATH|ID`: reuse a tokenizer; it needs an end-of-text (eos) token."""
    from gptcli.loading import load_tokenizer, resolve_source

    source = resolve_source(spec, flag="--tokenizer")  # messages name the flag the user passed
    try:
        tok = load_tokenizer(source.path, trust_remote_code=trust_remote_code, padding_side="right")
    except ModelLoadError:
        raise
    if tok.eos_token_id is None:
        raise ModelLoadError(f"tokenizer '{spec}' has no end-of-text (eos) token to separate documents.")
    return tok


def eot_id(tok: Any) -> int:
    return int(tok.eos_token_id)


def encode_documents(tok: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text. Encodes lines in batches: the same tokens as one long encode, in less time."""
    backend = getattr(tok, "backend_tokenizer", None)
    # Only pre-tokenizers that never merge across a newline give identical tokens line by line.
    by_line = backend is not None and type(backend.pre_tokenizer).__name__ in ("ByteLevel", "Split")
    out: list[list[int]] = []
    for text in texts:
        if by_line and backend is not None:
            # Lines end at "\n" only: str.splitlines() also cuts at U+2028, form feeds and the like,
            # where the pre-tokenizer may join characters, so the tokens would differ.
            encs = backend.encode_batch(_lines_keepends(text), add_special_tokens=False)
            out.append([i for e in encs for i in e.ids])
        elif backend is not None:
            out.append(backend.encode(text, add_special_tokens=False).ids)
        else:
            out.append(tok.encode(text, add_special_tokens=False))
    return out


def _lines_keepends(text: str) -> list[str]:
    """`text` cut after each "\n", keeping it (no empty last piece)."""
    parts = [line + "\n" for line in text.split("\n")]
    parts[-1] = parts[-1][:-1]
    return parts if parts[-1] else parts[:-1]
