"""Tiny translation models for the translate tests, built offline in fixtures.

A Marian encoder-decoder with a real sentencepiece tokenizer (trained here on a
few sentences, byte fallback on so emoji and CJK survive), and causal models
from tests/tiny.py with a longer context so prompts and pieces fit.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

CORPUS = [
    "Hello world.",
    "The cat is black.",
    "I like tea. You like coffee!",
    "Where is the station?",
    "Le chat est noir.",
    "Bonjour le monde.",
    "J'aime le thé.",
    "Où est la gare ?",
    "Café, naïve, jalapeño, 日本語 🙂",
] * 20

CHAT_TEMPLATE = (
    "{% for m in messages %}<|endoftext|>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def build_marian(
    folder: Path,
    source_lang: str | None = "en",
    target_lang: str | None = "fr",
    target_tokens: tuple[str, ...] = (),
    context: int = 64,
    seed: int = 0,
) -> Path:
    import sentencepiece as spm
    import torch
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=buf,
        vocab_size=360,
        hard_vocab_limit=False,
        character_coverage=1.0,
        byte_fallback=True,
        model_type="unigram",
        pad_id=-1,
        bos_id=-1,
        eos_id=1,
        unk_id=2,
        minloglevel=2,
    )
    for name in ("source.spm", "target.spm"):
        (folder / name).write_bytes(buf.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for token in target_tokens:  # multilingual Marian: >>fra<< style target-language tokens
        vocab[token] = len(vocab)
    for i in range(sp.get_piece_size()):
        vocab.setdefault(sp.id_to_piece(i), len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    kwargs = {k: v for k, v in (("source_lang", source_lang), ("target_lang", target_lang)) if v}
    tok = MarianTokenizer(str(folder / "source.spm"), str(folder / "target.spm"), str(folder / "vocab.json"), **kwargs)
    tok.save_pretrained(folder)
    config = MarianConfig(
        vocab_size=len(vocab),
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=context,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        forced_eos_token_id=1,
    )
    torch.manual_seed(seed)
    MarianMTModel(config).save_pretrained(folder)
    return folder


def _spm(folder: Path, **special) -> bytes:
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=buf,
        vocab_size=360,
        hard_vocab_limit=False,
        character_coverage=1.0,
        byte_fallback=True,
        model_type="unigram",
        minloglevel=2,
        **special,
    )
    return buf.getvalue()


def build_m2m100(folder: Path, context: int = 64, seed: int = 0) -> Path:
    """A tiny M2M100 (language tokens __en__, __fr__, … outside its vocab.json, as in the real ones)."""
    import sentencepiece as spm
    import torch
    from transformers import M2M100Config, M2M100ForConditionalGeneration, M2M100Tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = _spm(folder, pad_id=-1, bos_id=-1, eos_id=-1, unk_id=0)
    (folder / "sentencepiece.bpe.model").write_bytes(model)
    sp = spm.SentencePieceProcessor(model_proto=model)
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for i in range(sp.get_piece_size()):
        vocab.setdefault(sp.id_to_piece(i), len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    tok = M2M100Tokenizer(
        str(folder / "vocab.json"), str(folder / "sentencepiece.bpe.model"), src_lang="en", tgt_lang="fr"
    )
    tok.save_pretrained(folder)
    size = max(tok.convert_tokens_to_ids(t) for t in tok.lang_code_to_token.values()) + 1
    config = M2M100Config(
        vocab_size=size,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=context,
        pad_token_id=1,
        eos_token_id=2,
        bos_token_id=0,
        decoder_start_token_id=2,
    )
    torch.manual_seed(seed)
    M2M100ForConditionalGeneration(config).save_pretrained(folder)
    return folder


def build_causal(folder: Path, arch: str = "gpt2", context: int = 128, chat: bool = False) -> Path:
    from tiny import build_model

    return build_model(folder, arch, context=context, chat_template=CHAT_TEMPLATE if chat else None)
