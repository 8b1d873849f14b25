"""How fast `gptcli eval` scores text, against a plain loop of one fp32 forward pass per window.

    python benchmarks/eval_speed.py                 # a 16,000-character slice, 2 rounds: a few minutes on 2 cores
    python benchmarks/eval_speed.py --chars 0       # all of tinyshakespeare (long)

The model is GPT-2-124M-shaped (12 layers, 12 heads, 768 wide, 1,024 positions,
a 50,257-token output layer) with random weights, built locally: nothing is
downloaded. Its tokenizer is a byte-level BPE trained here on the same text
(8,192 tokens; ids beyond that are never fed, but the output layer still
scores all 50,257, so the cost per token is GPT-2's).

All runs score the same windows (context 1,024, stride 1,024) of the same
tokens in one process, so their tokens/s compare side by side:
- plain loop: `model(window).logits`, fp32, `torch.no_grad()`, one window per forward;
- gptcli eval: `open_model` + `evaluate_model`, i.e. what `gptcli eval` runs
  (packed weights, inference mode, batches, `--dtype auto`), and the same with
  `--dtype float32` to separate the dtype's share from the rest.
Each run goes --rounds times, interleaved, and its best round counts (the
machine is shared; load drifts within a run). The NLL column shows what each
run's precision costs.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import build_gpt2_124m  # noqa: E402


def build(folder: Path, text: str) -> None:
    build_gpt2_124m(folder, text)  # GPT-2-124M shape, 50,257-token output layer, tokenizer trained on `text`


class PlainLoop:
    """The straightforward reference: one fp32 forward per window, no batching, `torch.no_grad()`."""

    name, dtype = "plain loop", "float32"

    def __init__(self, folder: Path):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    def __call__(self, text: str, max_tokens: int | None) -> tuple[int, float, float]:
        import torch
        import torch.nn.functional as F

        from gptcli.evaluation.windows import plan_windows

        started = time.perf_counter()
        # lm-evaluation-harness's rolling rule, as gptcli eval: the text after BOS (else EOS), every token scored.
        prefix = self.tok.bos_token_id if self.tok.bos_token_id is not None else self.tok.eos_token_id
        ids = [prefix] + self.tok(text, add_special_tokens=False, verbose=False)["input_ids"][:max_tokens]
        total, count = 0.0, 0
        with torch.no_grad():
            for w in plan_windows(len(ids), 1024, 1024):
                logits = self.model(torch.tensor([ids[w.begin : w.end]])).logits[0]
                targets = torch.tensor(ids[w.end - w.targets + 1 : w.end + 1])  # each position predicts the next token
                total += F.cross_entropy(logits[-w.targets :], targets, reduction="sum").item()
                count += w.targets
        return count, time.perf_counter() - started, total / count


class GptcliEval:
    """What `gptcli eval --model FOLDER --dtype D --batch-size B` runs once the model is loaded."""

    def __init__(self, folder: Path, dtype: str, batch_size: int):
        from gptcli.loading import open_model

        self.lm, _ = open_model(str(folder), device="cpu", dtype=dtype)
        self.batch_size = batch_size
        self.name = f"gptcli eval --dtype {dtype}"
        self.dtype = str(self.lm.runtime.dtype).replace("torch.", "")

    def __call__(self, text: str, max_tokens: int | None) -> tuple[int, float, float]:
        from gptcli.data import Document
        from gptcli.evaluation import evaluate_model

        score = evaluate_model(
            self.lm, [Document("slice", text, "tinyshakespeare")], batch_size=self.batch_size, max_tokens=max_tokens
        )
        return score.tokens, score.seconds, score.nll


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", type=int, default=16_000, help="characters of tinyshakespeare to score (0: all)")
    parser.add_argument("--max-tokens", type=int, default=None, help="cut the token stream (all runs alike)")
    parser.add_argument("--rounds", type=int, default=2, help="each run this many times, interleaved; the best counts")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    full = args.data.read_text(encoding="utf-8")
    text = full[: args.chars] if args.chars else full

    import torch

    from gptcli.loading import quiet_transformers

    quiet_transformers()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; scoring {len(text):,} characters, "
        f"best of {args.rounds} interleaved rounds",
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory(prefix="gptcli-evalbench-") as tmp:
        folder = Path(tmp)
        build(folder, full)
        runs = [
            PlainLoop(folder),
            GptcliEval(folder, "auto", args.batch_size),
            GptcliEval(folder, "float32", args.batch_size),
        ]
    warm = full[:2000]  # first calls pay one-off setup (oneDNN primitives, allocator): not what we measure
    for run in runs:
        run(warm, None)
    # Interleaved rounds: the machine is shared, so load drifts; the best round of each is its speed.
    results: dict[str, list[tuple[int, float, float]]] = {run.name: [] for run in runs}
    for r in range(args.rounds):
        for run in runs:
            results[run.name].append(run(text, args.max_tokens))
            print(f"  round {r + 1}: {run.name}: {results[run.name][-1][1]:.1f} s", file=sys.stderr)

    best = {name: min(rs, key=lambda x: x[1]) for name, rs in results.items()}
    base = best[runs[0].name][0] / best[runs[0].name][1]
    print(
        f"{'run':<28} {'dtype':<9} {'tokens':>7} {'best s':>7} {'median s':>8} {'tokens/s':>9} {'vs plain':>9} "
        f"{'nll/token':>10} {'ppl':>9}"
    )
    for run in runs:
        tokens, seconds, nll = best[run.name]
        median = statistics.median(x[1] for x in results[run.name])
        tps = tokens / seconds
        print(
            f"{run.name:<28} {run.dtype:<9} {tokens:>7} {seconds:>7.1f} {median:>8.1f} {tps:>9.0f} {tps / base:>8.2f}x "
            f"{nll:>10.5f} {math.exp(nll):>9.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
