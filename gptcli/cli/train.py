"""`gptcli train` and `gptcli finetune`: thin front ends of gptcli.training.

Every option defaults to None ("not given") so that a --config file and,
when resuming, the run's saved config can fill it; gptcli.training.settings
holds the real defaults and the validation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from gptcli.cli import options as opt

DATA_PANEL = "Data"
TOKENIZER_PANEL = "Tokenizer"
ARCH_PANEL = "Model shape"
LORA_PANEL = "LoRA"
OPTIM_PANEL = "Optimisation"
RUN_PANEL = "Evaluation, checkpoints and output"


def _opt(*names: str, help: str, panel: str = OPTIM_PANEL):
    return typer.Option(*names, help=help, rich_help_panel=panel, show_default=False)


Data = Annotated[
    Optional[list[str]],
    typer.Argument(
        help="Text files or folders (.txt, .jsonl, .json, .csv, .tsv, .parquet); '-' is stdin.", show_default=False
    ),
]
TextField = Annotated[
    Optional[str],
    _opt(
        "--text-field",
        help="Field/column with the text in .jsonl/.json/.csv/.parquet. (default: text)",
        panel=DATA_PANEL,
    ),
]
ValSplit = Annotated[
    Optional[float],
    _opt(
        "--val-split",
        help="Fraction of the tokens held out for validation (the end of the data). (default: 0.05)",
        panel=DATA_PANEL,
    ),
]
Cache = Annotated[
    Optional[Path],
    _opt(
        "--cache",
        help="Token cache folder: the data are tokenized once into it and reused by later runs, --resume and every "
        "torchrun rank (see `gptcli prepare`). (default: $GPTCLI_CACHE_DIR or ~/.cache/gptcli/tokens)",
        panel=DATA_PANEL,
    ),
]
ValData = Annotated[
    Optional[list[str]],
    _opt("--val-data", help="Validation files instead of --val-split. Repeatable.", panel=DATA_PANEL),
]
BlockSize = Annotated[
    Optional[int],
    _opt(
        "--block-size",
        help="Tokens per training sequence (train: also the model's context). (default: the preset's / the model's context, at most 1024)",
        panel=DATA_PANEL,
    ),
]
Steps = Annotated[Optional[int], _opt("--steps", help="Optimizer steps. (default: 1000, or from --epochs)")]
Epochs = Annotated[Optional[float], _opt("--epochs", help="Passes over the training data (instead of --steps).")]
TrainBatch = Annotated[
    Optional[int], _opt("--batch-size", "-b", help="Sequences per micro-batch per process. (default: 16)")
]
GradAccum = Annotated[Optional[int], _opt("--grad-accum", help="Micro-batches per optimizer step. (default: 1)")]
Lr = Annotated[
    Optional[float], _opt("--lr", help="Peak learning rate. (default: train 1e-3; finetune 1e-4, LoRA 2e-4)")
]
MinLr = Annotated[Optional[float], _opt("--min-lr", help="Learning rate at the end of the decay. (default: lr/10)")]
Warmup = Annotated[
    Optional[int], _opt("--warmup", help="Linear warmup steps. (default: 5% of the steps, at most 1000)")
]
Schedule = Annotated[
    Optional[str], _opt("--schedule", help="cosine, linear or constant decay after warmup. (default: cosine)")
]
WeightDecay = Annotated[
    Optional[float], _opt("--weight-decay", help="AdamW weight decay (matrices only). (default: 0.1)")
]
Beta2 = Annotated[Optional[float], _opt("--beta2", help="AdamW beta2. (default: 0.95)")]
GradClip = Annotated[
    Optional[float], _opt("--grad-clip", help="Clip the gradient norm to this; 0 turns it off. (default: 1.0)")
]
Precision = Annotated[
    Optional[str],
    _opt(
        "--precision",
        help="auto, fp32, bf16 or fp16 mixed precision (weights stay fp32). auto: bf16/fp16 on CUDA, bf16 on CPUs with native bf16, else fp32. (default: auto)",
    ),
]
Fsdp = Annotated[
    bool,
    typer.Option(
        "--fsdp",
        help="Under torchrun: shard weights, gradients and optimizer state across the processes (FSDP2) instead of replicating them (DDP). Checkpoints still hold the full model. No effect in one process; not with --lora.",
        rich_help_panel=OPTIM_PANEL,
    ),
]
EvalEvery = Annotated[
    Optional[int],
    _opt(
        "--eval-every", help="Steps between validation runs; 0: only at the end. (default: steps/10)", panel=RUN_PANEL
    ),
]
EvalBatches = Annotated[
    Optional[int],
    _opt("--eval-batches", help="Validation batches per evaluation, at most. (default: 20)", panel=RUN_PANEL),
]
SaveEvery = Annotated[
    Optional[int],
    _opt("--save-every", help="Steps between checkpoints; 0: only at the end. (default: steps/5)", panel=RUN_PANEL),
]
KeepCheckpoints = Annotated[
    Optional[int], _opt("--keep-checkpoints", help="Newest checkpoints kept. (default: 2)", panel=RUN_PANEL)
]
LogEvery = Annotated[
    Optional[int],
    _opt("--log-every", help="Steps between progress lines. (default: steps/50, 1..100)", panel=RUN_PANEL),
]
TrainSeed = Annotated[
    Optional[int],
    _opt("--seed", help="Seed for initial weights, data order and dropout. (default: 1337)", panel=RUN_PANEL),
]
Out = Annotated[
    Optional[Path],
    _opt(
        "--out",
        "-o",
        help="Output folder: final model, checkpoints/, metrics.jsonl, run.json. Required (here or as out in --config).",
        panel=RUN_PANEL,
    ),
]
Resume = Annotated[
    Optional[str],
    _opt(
        "--resume", help="auto (newest checkpoint in --out) or a checkpoint folder: continue exactly.", panel=RUN_PANEL
    ),
]
Overwrite = Annotated[
    bool,
    typer.Option(
        "--overwrite", help="Replace a non-empty --out folder from an earlier run.", rich_help_panel=RUN_PANEL
    ),
]
ConfigFile = Annotated[
    Optional[Path],
    _opt("--config", "-c", help="YAML or TOML file of options; the command line wins over it.", panel=RUN_PANEL),
]


def _given(**values) -> dict:
    """The options the user gave (None, False and empty lists mean "not given"), keyed by setting name."""
    return {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in values.items()
        if v is not None and v is not False and v != []
    }


def _finish(summary: dict, as_json: bool) -> None:
    from gptcli import console
    from gptcli.training.runner import is_main

    if as_json and is_main():  # under torchrun only rank 0 prints
        console.write(json.dumps(summary) + "\n")


def train(
    data: Data = None,
    text_field: TextField = None,
    val_split: ValSplit = None,
    val_data: ValData = None,
    cache: Cache = None,
    tokenizer: Annotated[
        Optional[str],
        _opt(
            "--tokenizer",
            help="Reuse this tokenizer (folder or Hub id) instead of training one.",
            panel=TOKENIZER_PANEL,
        ),
    ] = None,
    tokenizer_type: Annotated[
        Optional[str],
        _opt(
            "--tokenizer-type",
            help="bpe (byte-level BPE trained on the data), char (one token per character) or bytes (256 byte tokens). (default: bpe)",
            panel=TOKENIZER_PANEL,
        ),
    ] = None,
    vocab_size: Annotated[
        Optional[int],
        _opt(
            "--vocab-size", help="BPE vocabulary size, special tokens included. (default: 8192)", panel=TOKENIZER_PANEL
        ),
    ] = None,
    tokenizer_sample_mb: Annotated[
        Optional[float],
        _opt(
            "--tokenizer-sample-mb",
            help="Train the BPE tokenizer on the first this many MB of documents. (default: 200)",
            panel=TOKENIZER_PANEL,
        ),
    ] = None,
    arch: Annotated[Optional[str], _opt("--arch", help="gpt2 or llama. (default: gpt2)", panel=ARCH_PANEL)] = None,
    preset: Annotated[
        Optional[str],
        _opt(
            "--preset",
            help="Size: tiny, micro, mini (~5M), small, gpt2 (124M shape), gpt2-medium. (default: mini)",
            panel=ARCH_PANEL,
        ),
    ] = None,
    n_layer: Annotated[
        Optional[int], _opt("--n-layer", help="Transformer blocks (overrides the preset).", panel=ARCH_PANEL)
    ] = None,
    n_head: Annotated[
        Optional[int], _opt("--n-head", help="Attention heads (overrides the preset).", panel=ARCH_PANEL)
    ] = None,
    n_embd: Annotated[
        Optional[int], _opt("--n-embd", help="Embedding width (overrides the preset).", panel=ARCH_PANEL)
    ] = None,
    block_size: BlockSize = None,
    dropout: Annotated[
        Optional[float], _opt("--dropout", help="Dropout probability (overrides the preset).", panel=ARCH_PANEL)
    ] = None,
    model_config: Annotated[
        Optional[Path],
        _opt(
            "--model-config",
            help="A full transformers config JSON (with model_type) instead of --arch/--preset.",
            panel=ARCH_PANEL,
        ),
    ] = None,
    steps: Steps = None,
    epochs: Epochs = None,
    batch_size: TrainBatch = None,
    grad_accum: GradAccum = None,
    lr: Lr = None,
    min_lr: MinLr = None,
    warmup: Warmup = None,
    schedule: Schedule = None,
    weight_decay: WeightDecay = None,
    beta2: Beta2 = None,
    grad_clip: GradClip = None,
    precision: Precision = None,
    fsdp: Fsdp = False,
    eval_every: EvalEvery = None,
    eval_batches: EvalBatches = None,
    save_every: SaveEvery = None,
    keep_checkpoints: KeepCheckpoints = None,
    log_every: LogEvery = None,
    seed: TrainSeed = None,
    out: Out = None,
    resume: Resume = None,
    overwrite: Overwrite = False,
    config: ConfigFile = None,
    as_json: opt.Json = False,
    device: opt.Device = None,
    threads: opt.Threads = None,
) -> None:
    """Train a tokenizer and a GPT model from scratch on your text.

    Examples: gptcli train stories.txt --out my-model --steps 2000 ·
    gptcli train data/ --preset micro --arch llama --out run --json ·
    gptcli train --out run --resume auto
    """
    cli = _given(
        data=data,
        text_field=text_field,
        val_split=val_split,
        val_data=val_data,
        cache=cache,
        tokenizer=tokenizer,
        tokenizer_type=tokenizer_type,
        vocab_size=vocab_size,
        tokenizer_sample_mb=tokenizer_sample_mb,
        arch=arch,
        preset=preset,
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        block_size=block_size,
        dropout=dropout,
        model_config=model_config,
        steps=steps,
        epochs=epochs,
        batch_size=batch_size,
        grad_accum=grad_accum,
        lr=lr,
        min_lr=min_lr,
        warmup=warmup,
        schedule=schedule,
        weight_decay=weight_decay,
        beta2=beta2,
        grad_clip=grad_clip,
        precision=precision,
        fsdp=fsdp,
        eval_every=eval_every,
        eval_batches=eval_batches,
        save_every=save_every,
        keep_checkpoints=keep_checkpoints,
        log_every=log_every,
        seed=seed,
        out=out,
        resume=resume,
        overwrite=overwrite,
        device=device,
        threads=threads,
    )
    from gptcli.training import pretrain
    from gptcli.training.runner import settings_from

    settings = settings_from(cli, str(config) if config else None, "train")
    _finish(pretrain.run(settings), as_json)


def finetune(
    data: Data = None,
    model: opt.Model = None,
    text_field: TextField = None,
    data_format: Annotated[
        Optional[str],
        _opt(
            "--format",
            help="auto, text (plain LM loss), completion (prompt/completion JSONL) or chat (messages JSONL). (default: auto)",
            panel=DATA_PANEL,
        ),
    ] = None,
    val_split: ValSplit = None,
    val_data: ValData = None,
    cache: Cache = None,
    block_size: BlockSize = None,
    lora: Annotated[
        bool, typer.Option("--lora", help="Train a LoRA adapter instead of all weights.", rich_help_panel=LORA_PANEL)
    ] = False,
    lora_r: Annotated[Optional[int], _opt("--lora-r", help="LoRA rank. (default: 8)", panel=LORA_PANEL)] = None,
    lora_alpha: Annotated[
        Optional[float], _opt("--lora-alpha", help="LoRA alpha (scale = alpha / r). (default: 16)", panel=LORA_PANEL)
    ] = None,
    lora_dropout: Annotated[
        Optional[float], _opt("--lora-dropout", help="Dropout on the LoRA path. (default: 0.05)", panel=LORA_PANEL)
    ] = None,
    lora_targets: Annotated[
        Optional[list[str]],
        _opt(
            "--lora-targets",
            help="Module names to adapt (repeatable). (default: the attention and MLP projections of the architecture)",
            panel=LORA_PANEL,
        ),
    ] = None,
    merge: Annotated[
        bool,
        typer.Option("--merge", help="Write a plain model with the adapter merged in.", rich_help_panel=LORA_PANEL),
    ] = False,
    dropout: Annotated[
        Optional[float],
        _opt(
            "--dropout",
            help="Dropout probability of the model's own layers for this run (recorded in the config). (default: the model's)",
            panel=OPTIM_PANEL,
        ),
    ] = None,
    steps: Steps = None,
    epochs: Epochs = None,
    batch_size: TrainBatch = None,
    grad_accum: GradAccum = None,
    lr: Lr = None,
    min_lr: MinLr = None,
    warmup: Warmup = None,
    schedule: Schedule = None,
    weight_decay: WeightDecay = None,
    beta2: Beta2 = None,
    grad_clip: GradClip = None,
    precision: Precision = None,
    fsdp: Fsdp = False,
    eval_every: EvalEvery = None,
    eval_batches: EvalBatches = None,
    save_every: SaveEvery = None,
    keep_checkpoints: KeepCheckpoints = None,
    log_every: LogEvery = None,
    seed: TrainSeed = None,
    out: Out = None,
    resume: Resume = None,
    overwrite: Overwrite = False,
    config: ConfigFile = None,
    as_json: opt.Json = False,
    device: opt.Device = None,
    threads: opt.Threads = None,
    allow_pickle: opt.AllowPickle = False,
    trust_remote_code: opt.TrustRemoteCode = False,
) -> None:
    """Finetune a model (all weights or a LoRA adapter) on text, prompt/completion or chat data.

    Examples: gptcli finetune notes.txt -m my-model --out tuned --steps 200 ·
    gptcli finetune qa.jsonl -m gpt2 --lora --out qa-lora ·
    gptcli finetune chats.jsonl -m my-chat --lora --merge --out merged
    """
    cli = _given(
        data=data,
        model=model,
        text_field=text_field,
        format=data_format,
        val_split=val_split,
        val_data=val_data,
        cache=cache,
        block_size=block_size,
        lora=lora,
        lora_r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        lora_targets=lora_targets,
        merge=merge,
        dropout=dropout,
        allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
        steps=steps,
        epochs=epochs,
        batch_size=batch_size,
        grad_accum=grad_accum,
        lr=lr,
        min_lr=min_lr,
        warmup=warmup,
        schedule=schedule,
        weight_decay=weight_decay,
        beta2=beta2,
        grad_clip=grad_clip,
        precision=precision,
        fsdp=fsdp,
        eval_every=eval_every,
        eval_batches=eval_batches,
        save_every=save_every,
        keep_checkpoints=keep_checkpoints,
        log_every=log_every,
        seed=seed,
        out=out,
        resume=resume,
        overwrite=overwrite,
        device=device,
        threads=threads,
    )
    from gptcli.training import finetune as ft
    from gptcli.training.runner import settings_from

    settings = settings_from(cli, str(config) if config else None, "finetune")
    _finish(ft.run(settings), as_json)
