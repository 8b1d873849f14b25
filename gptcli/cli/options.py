"""Option declarations shared by every command, so a flag means the same everywhere.

Defaults are None on purpose: "not given" must be distinguishable from "given"
(per-record JSONL overrides, config files and chat's /set layer on top).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from gptcli.runtime import DEVICE_CHOICES, DTYPE_CHOICES, SMALL_MODEL_PARAMS
from gptcli.sampling import SamplingParams
from gptcli.speculative import DEFAULT_DRAFT_TOKENS


def _either(choices: tuple[str, ...]) -> str:
    return f"{', '.join(choices[:-1])} or {choices[-1]}"


MODEL_PANEL = "Model and device"
SAMPLING_PANEL = "Sampling"
OUTPUT_PANEL = "Output"
SPECULATIVE_PANEL = "Speculative decoding"

# --- model and runtime -------------------------------------------------------
Model = Annotated[
    Optional[str],
    typer.Option(
        "--model",
        "-m",
        envvar="GPTCLI_MODEL",
        help="Bundled model name, local Hugging Face folder, Hub id, or openai:NAME (a model on an "
        "OpenAI-compatible server, see --api-base). Default: the bundled model.",
        rich_help_panel=MODEL_PANEL,
        show_default=False,
    ),
]
Device = Annotated[
    Optional[str],
    typer.Option(
        "--device",
        envvar="GPTCLI_DEVICE",
        help=f"{_either(DEVICE_CHOICES)}. auto picks CUDA, then MPS, then CPU. (default: auto)",
        rich_help_panel=MODEL_PANEL,
        show_default=False,
    ),
]
Dtype = Annotated[
    Optional[str],
    typer.Option(
        "--dtype",
        envvar="GPTCLI_DTYPE",
        help=f"{_either(DTYPE_CHOICES)}. auto picks the fastest safe type for the device. (default: auto)",
        rich_help_panel=MODEL_PANEL,
        show_default=False,
    ),
]
Threads = Annotated[
    Optional[int],
    typer.Option(
        "--threads",
        envvar="GPTCLI_THREADS",
        help=f"CPU threads for PyTorch. (default: 1 for models under {SMALL_MODEL_PARAMS // 1_000_000} M parameters, "
        "else PyTorch's own count)",
        rich_help_panel=MODEL_PANEL,
        show_default=False,
    ),
]
Quantize = Annotated[
    Optional[str],
    typer.Option(
        "--quantize",
        envvar="GPTCLI_QUANTIZE",
        help="int8 or int4: run the linear layers with quantized weights (CPU; faster, slightly less exact). "
        "(default: off)",
        rich_help_panel=MODEL_PANEL,
        show_default=False,
    ),
]
ApiBase = Annotated[
    Optional[str],
    typer.Option(
        "--api-base",
        envvar="OPENAI_BASE_URL",
        help="Server URL for --model openai:NAME (gptcli serve, vLLM, ollama, llama.cpp). The key, if it needs "
        "one, comes from OPENAI_API_KEY. (default: https://api.openai.com/v1)",
        rich_help_panel=MODEL_PANEL,
        show_default=False,
    ),
]
Timeout = Annotated[
    Optional[float],
    typer.Option(
        "--timeout",
        envvar="GPTCLI_TIMEOUT",
        help="Seconds to wait for a remote server (openai:NAME) to connect or send more text. (default: 60)",
        rich_help_panel=MODEL_PANEL,
        show_default=False,
    ),
]
AllowPickle = Annotated[
    bool,
    typer.Option(
        "--allow-pickle",
        help="Allow pickle weights (.bin/.pt). Pickle can run code: only for sources you trust.",
        rich_help_panel=MODEL_PANEL,
    ),
]
TrustRemoteCode = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code",
        help="Run model code shipped with a Hub repository. Only for sources you trust.",
        rich_help_panel=MODEL_PANEL,
    ),
]
Seed = Annotated[
    Optional[int],
    typer.Option(
        "--seed",
        help="Random seed: same seed, model and device give the same output. (default: a random seed)",
        show_default=False,
    ),
]

# --- sampling ----------------------------------------------------------------
MaxNewTokens = Annotated[
    Optional[int],
    typer.Option(
        "--max-new-tokens",
        "-t",
        help=f"Tokens to generate. (default: {SamplingParams.max_new_tokens})",
        rich_help_panel=SAMPLING_PANEL,
        show_default=False,
    ),
]
Temperature = Annotated[
    Optional[float],
    typer.Option(
        "--temperature",
        help=f"Sampling temperature; 0 is greedy. (default: {SamplingParams.temperature})",
        rich_help_panel=SAMPLING_PANEL,
        show_default=False,
    ),
]
TopK = Annotated[
    Optional[int],
    typer.Option(
        "--top-k",
        help=f"Sample from the k most likely tokens; 0 turns it off. (default: {SamplingParams.top_k})",
        rich_help_panel=SAMPLING_PANEL,
        show_default=False,
    ),
]
TopP = Annotated[
    Optional[float],
    typer.Option(
        "--top-p",
        help=f"Nucleus sampling: smallest set with this probability mass, in (0, 1]. (default: {SamplingParams.top_p})",
        rich_help_panel=SAMPLING_PANEL,
        show_default=False,
    ),
]
MinP = Annotated[
    Optional[float],
    typer.Option(
        "--min-p",
        help="Drop tokens less likely than min-p times the most likely one. (default: off)",
        rich_help_panel=SAMPLING_PANEL,
        show_default=False,
    ),
]
RepetitionPenalty = Annotated[
    Optional[float],
    typer.Option(
        "--repetition-penalty",
        help="Above 1 discourages repeating tokens already present. (default: off)",
        rich_help_panel=SAMPLING_PANEL,
        show_default=False,
    ),
]
Greedy = Annotated[
    bool,
    typer.Option("--greedy", help="Always pick the most likely token (deterministic).", rich_help_panel=SAMPLING_PANEL),
]
NumReturnSequences = Annotated[
    Optional[int],
    typer.Option(
        "--num-return-sequences",
        "-n",
        help=f"Completions per prompt. (default: {SamplingParams.num_return_sequences})",
        rich_help_panel=SAMPLING_PANEL,
        show_default=False,
    ),
]
NumBeams = Annotated[
    Optional[int],
    typer.Option(
        "--num-beams",
        help=f"Beam search width; 1 turns beam search off. (default: {SamplingParams.num_beams})",
        rich_help_panel=SAMPLING_PANEL,
        show_default=False,
    ),
]


def _unescape_stop(values: Optional[list[str]]) -> Optional[list[str]]:
    from gptcli.sampling import unescape

    return [unescape(v) for v in values] if values else values


Stop = Annotated[
    Optional[list[str]],
    typer.Option(
        "--stop",
        help="Stop when this string is produced (not printed). \\n, \\t, \\\\ and \\uXXXX are understood. Repeatable.",
        rich_help_panel=SAMPLING_PANEL,
        show_default=False,
        callback=_unescape_stop,
    ),
]

# --- speculative decoding ----------------------------------------------------
PromptLookup = Annotated[
    Optional[int],
    typer.Option(
        "--prompt-lookup",
        help="Draft up to N tokens by copying what followed the last matching words of the prompt or reply; "
        "the model checks them in one pass. Faster when the output quotes its input; same greedy text.",
        rich_help_panel=SPECULATIVE_PANEL,
        show_default=False,
    ),
]
DraftModel = Annotated[
    Optional[str],
    typer.Option(
        "--draft-model",
        help="A smaller model with the same tokenizer drafts tokens that the model checks in one pass "
        "(bundled name, folder or Hub id). Same greedy text.",
        rich_help_panel=SPECULATIVE_PANEL,
        show_default=False,
    ),
]
DraftTokens = Annotated[
    Optional[int],
    typer.Option(
        "--draft-tokens",
        help=f"Tokens the draft model proposes per pass. (default: {DEFAULT_DRAFT_TOKENS})",
        rich_help_panel=SPECULATIVE_PANEL,
        show_default=False,
    ),
]

# --- output ------------------------------------------------------------------
Json = Annotated[
    bool,
    typer.Option(
        "--json", help="Machine-readable JSON (JSON Lines for many results) on stdout.", rich_help_panel=OUTPUT_PANEL
    ),
]
Stats = Annotated[
    bool,
    typer.Option("--stats", "-v", help="Print speed and memory statistics on stderr.", rich_help_panel=OUTPUT_PANEL),
]
# Inputs per device batch when --batch-size is not given; the commands use these same values.
GENERATE_BATCH_SIZE = 8
EVAL_BATCH_SIZE = 8
TRANSLATE_BATCH_SIZE = 16


def _batch_size(default: int):
    return Annotated[
        Optional[int],
        typer.Option(
            "--batch-size",
            "-b",
            help=f"Inputs processed together on the device. (default: {default})",
            show_default=False,
        ),
    ]


GenerateBatchSize = _batch_size(GENERATE_BATCH_SIZE)
EvalBatchSize = _batch_size(EVAL_BATCH_SIZE)
TranslateBatchSize = _batch_size(TRANSLATE_BATCH_SIZE)
InputFile = Annotated[
    Optional[Path],
    typer.Option(
        "--file", "-f", help="Read inputs from this file (text lines or JSONL).", show_default=False, dir_okay=False
    ),
]
