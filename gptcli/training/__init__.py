"""The training engine shared by `gptcli train` and `gptcli finetune`.

Modules, one job each: settings (flags, defaults, precedence), configfile
(--config YAML/TOML), tokenizer (bpe/char/bytes), presets (model shapes and
configs), packing (token streams -> blocks), sampler (batches as a function
of the step), sft (prompt/completion and chat data with loss masks), lora
(peft adapters), precision (mixed precision per device), optim (AdamW and
the schedule), engine (the training loop), distributed (the accelerator:
DDP/FSDP2, gathering full state), checkpoint (atomic saves, resume), signals
(Ctrl-C), progress/metrics (stderr and metrics.jsonl), manifest (run.json),
outdir (the --out rule), export (final folder), runner (the template both
commands follow: setup, blocks, execute), pretrain and finetune (the commands:
tokenizer + model + examples).
"""
