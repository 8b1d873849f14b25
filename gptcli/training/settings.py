"""Training settings: one dataclass, its defaults, and the precedence rule.

Every flag of `train` and `finetune` is a field here. The command line passes
only the flags that were given (None means "not given"), a `--config` file
fills what the command line left out, and the defaults below fill the rest.
Validation happens here too, before any model or data loads, so a bad value
is one `Error:` line (exit 2) and no work is wasted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from gptcli.errors import UsageError

ARCHS = ("gpt2", "llama")
TOKENIZER_TYPES = ("bpe", "char", "bytes")
SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
FORMATS = ("auto", "text", "completion", "chat")
DEFAULT_VAL_SPLIT = 0.05


@dataclass
class TrainSettings:
    # --- data ---
    data: list[str] = field(default_factory=list)  # files/folders; '-' is stdin
    text_field: str = "text"  # column/field holding the text in .jsonl/.csv/.parquet/.json
    val_data: list[str] = field(default_factory=list)  # separate validation files (else --val-split)
    val_split: float | None = None  # fraction held out for validation; None: DEFAULT_VAL_SPLIT when it holds a block
    format: str = "auto"  # finetune only: text, completion (prompt/completion) or chat (messages)
    # --- tokenizer (train only) ---
    tokenizer: str | None = None  # reuse a tokenizer folder/Hub id instead of training one
    tokenizer_type: str = "bpe"  # bpe (byte-level BPE), char (one token per character), bytes (256 bytes)
    vocab_size: int = 8192  # BPE vocabulary size, special tokens included
    # --- model (train only) ---
    arch: str = "gpt2"  # gpt2 or llama
    preset: str = "mini"  # size preset, see presets.PRESETS
    n_layer: int | None = None  # overrides of the preset
    n_head: int | None = None
    n_embd: int | None = None
    block_size: int | None = None  # tokens per training sequence (train: also the model's context)
    dropout: float | None = None
    model_config: str | None = None  # a full transformers config JSON instead of arch/preset
    # --- model (finetune only) ---
    model: str | None = None
    lora: bool = False
    lora_r: int = 8  # LoRA rank
    lora_alpha: float = 16.0  # LoRA scaling numerator (scale = alpha / r)
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=list)  # module names; empty: chosen per architecture
    merge: bool = False  # write a merged plain model instead of the adapter
    # --- optimisation ---
    steps: int | None = None  # optimizer steps; default: --epochs, else 1,000
    epochs: float | None = None  # passes over the training blocks (converted to steps)
    batch_size: int = 16  # sequences per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float | None = None  # peak learning rate; default 1e-3 (train), 1e-4 full / 2e-4 LoRA (finetune)
    min_lr: float | None = None  # floor of the schedule; default lr / 10
    warmup: int | None = None  # warmup steps; default 5% of the steps, at most 1,000
    schedule: str = "cosine"
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off
    precision: str = "auto"  # auto, fp32, bf16, fp16 (mixed precision; weights stay fp32)
    fsdp: bool = False  # under torchrun: shard weights, gradients and optimizer state (FSDP2) instead of DDP
    # --- evaluation, checkpoints, output ---
    eval_every: int | None = None  # steps between validation runs; default ~10 per run; 0: only at the end
    eval_batches: int = 20  # validation batches per evaluation (at most)
    save_every: int | None = None  # steps between checkpoints; default: steps/5; 0: only at the end
    keep_checkpoints: int = 2  # newest checkpoints kept
    log_every: int | None = None  # steps between progress lines
    seed: int = 1337
    out: str | None = None
    resume: str | None = None  # "auto" or a checkpoint folder
    overwrite: bool = False
    device: str | None = None
    threads: int | None = None
    allow_pickle: bool = False
    trust_remote_code: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FIELD_NAMES = {f.name for f in fields(TrainSettings)}
# Keys that make no sense inside a saved config (they describe one invocation, not the run).
INVOCATION_KEYS = {"resume", "overwrite"}


def normalise_key(key: str) -> str:
    return key.strip().lstrip("-").replace("-", "_")


def merge(
    cli: dict[str, Any], file_values: dict[str, Any] | None = None, *, source: str = "config file"
) -> TrainSettings:
    """Command line over config file over defaults."""
    values: dict[str, Any] = {}
    for key, value in (file_values or {}).items():
        name = normalise_key(key)
        if name not in FIELD_NAMES:
            raise UsageError(
                f"{source}: unknown setting '{key}'.", hint="Use the long option names, e.g. n-layer: 4 or n_layer = 4."
            )
        values[name] = _coerce(name, value, source)
    values.update({k: v for k, v in cli.items() if v is not None})
    settings = TrainSettings(**values)
    return settings


def _coerce(name: str, value: Any, source: str) -> Any:
    spec = TrainSettings.__dataclass_fields__[name]
    kind = str(spec.type)
    try:
        if value is None:
            return None
        if kind.startswith("list"):
            return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
        if kind.startswith("bool"):
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "yes", "1", "on"):
                return True
            if str(value).lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError(value)
        if kind.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if kind.startswith("float"):
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise UsageError(
            f"{source}: '{name.replace('_', '-')}' has an invalid value {value!r} ({kind.split(' ')[0]} expected)."
        ) from None


def validate(s: TrainSettings, *, command: str) -> TrainSettings:
    """Check every value users can get wrong; exit 2 with one line before any work."""

    def bad(msg: str, hint: str | None = None):
        raise UsageError(msg, hint=hint)

    if not s.data:
        bad("no training data given.", hint=f"Pass one or more files or folders: gptcli {command} data.txt --out run/")
    if s.out is None:
        bad("--out is required: the folder the model and checkpoints are written to.")
    if s.val_split is not None and not 0 <= s.val_split < 1:
        bad(f"--val-split must be in [0, 1) (got {s.val_split}).")
    _choice("--tokenizer-type", s.tokenizer_type, TOKENIZER_TYPES)
    _choice("--arch", s.arch, ARCHS)
    _choice("--schedule", s.schedule, SCHEDULES)
    _choice("--precision", s.precision, PRECISIONS)
    _choice("--format", s.format, FORMATS)
    from gptcli.training.presets import PRESETS

    if command == "train":
        _choice("--preset", s.preset, tuple(PRESETS))
    if s.vocab_size < 2 or s.vocab_size > 1_000_000:
        bad(f"--vocab-size must be between 2 and 1,000,000 (got {s.vocab_size}).")
    for name in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "grad_accum", "lora_r", "eval_batches"):
        value = getattr(s, name)
        if value is not None and value < 1:
            bad(f"--{name.replace('_', '-')} must be at least 1 (got {value}).")
    for name in ("steps", "keep_checkpoints", "log_every"):
        value = getattr(s, name)
        if value is not None and value < 1:
            bad(f"--{name.replace('_', '-')} must be at least 1 (got {value}).")
    for name in ("eval_every", "save_every", "warmup"):
        value = getattr(s, name)
        if value is not None and value < 0:
            bad(f"--{name.replace('_', '-')} must be 0 or more (got {value}).")
    if s.epochs is not None and s.epochs <= 0:
        bad(f"--epochs must be positive (got {s.epochs}).")
    if s.steps is not None and s.epochs is not None:
        bad("give either --steps or --epochs, not both.")
    if s.lr is not None and not s.lr > 0:
        bad(f"--lr must be positive (got {s.lr}).")
    if s.min_lr is not None and s.min_lr < 0:
        bad(f"--min-lr must be 0 or more (got {s.min_lr}).")
    for name in ("dropout", "lora_dropout"):
        value = getattr(s, name)
        if value is not None and not 0 <= value < 1:
            bad(f"--{name.replace('_', '-')} must be in [0, 1) (got {value}).")
    for name in ("beta1", "beta2"):
        if not 0 <= getattr(s, name) < 1:
            bad(f"--{name} must be in [0, 1).")
    if s.weight_decay < 0:
        bad(f"--weight-decay must be 0 or more (got {s.weight_decay}).")
    if s.grad_clip < 0:
        bad(f"--grad-clip must be 0 or more (got {s.grad_clip}); 0 turns clipping off.")
    if s.n_head is not None and s.n_embd is not None and s.n_embd % s.n_head:
        bad(f"--n-embd ({s.n_embd}) must be a multiple of --n-head ({s.n_head}).")
    if s.resume is not None and s.overwrite:
        bad("--resume and --overwrite contradict each other; pick one.")
    if s.merge and not s.lora:
        bad("--merge only applies to --lora finetuning.")
    if s.fsdp and s.lora:
        bad(
            "--fsdp shards full-weight training; it does not support --lora adapters.",
            hint="Drop --fsdp: under torchrun --lora trains data-parallel (DDP).",
        )
    from gptcli.runtime import parse_device

    s.device = parse_device(s.device)
    return s


def _choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"{flag} must be one of {', '.join(choices)} (got '{value}').")
