"""Build tiny real models offline for tests: a BPE tokenizer trained with `tokenizers`,
small configs of real transformers architectures, saved with `save_pretrained`."""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "Once upon a time there was a little dog named Max.",
    "Max liked to run in the park with his friend Tom.",
    "One day Tom and Sue went to the sea to look for shells.",
    "The sun was warm and the sky was blue.",
    "They found a big red shell and took it home.",
    "Mom said: that is a very pretty shell!",
    "Café, naïve, jalapeño, and 日本語 are words too. 🙂",
] * 20

EOT = "<|endoftext|>"


def build_tokenizer(folder: Path, vocab_size: int = 300, chat_template: str | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOT, bos_token=EOT, unk_token=EOT)
    if chat_template:
        fast.chat_template = chat_template
    fast.save_pretrained(folder)
    return fast


def build_model(
    folder: Path, arch: str = "gpt2", seed: int = 0, context: int = 64, chat_template: str | None = None
) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(folder, chat_template=chat_template)
    eot = tok.convert_tokens_to_ids(EOT)
    if arch == "gpt2":
        config = GPT2Config(
            vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=context, bos_token_id=eot, eos_token_id=eot
        )
    elif arch in ("llama", "llama-wide"):
        # llama-wide: every projection a whole number of 64-row blocks, as in real models (the
        # int4 kernel's packed layout fuses q/k/v and gate/up only then; gptcli.quantize).
        wide = arch == "llama-wide"
        config = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=128 if wide else 32,
            intermediate_size=256 if wide else 64,
            num_hidden_layers=2,
            num_attention_heads=4 if wide else 2,
            num_key_value_heads=2 if wide else 1,
            max_position_embeddings=context,
            bos_token_id=eot,
            eos_token_id=eot,
            pad_token_id=eot,
        )
    else:
        raise ValueError(arch)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    # Random init gives near-uniform logits; scale them so sampling vs greedy differ visibly.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(8.0)
    model.save_pretrained(folder)
    return folder
