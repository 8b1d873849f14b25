"""Speculative decoding speed: ordinary greedy decoding against prompt lookup and a draft model,
same model, same prompts, one process, interleaved rounds.

    python benchmarks/speculative_speed.py [--prompts 6] [--new-tokens 120] [--rounds 3]
                                           [--draft-dir DIR] [--draft-steps 400] [--only lookup|draft]

Target: the bundled story model (gptcli/bundled/tinystories, 6 layers, 256 wide, 4,096-token
vocabulary, float32 on one thread as gptcli picks for a model this small).

Prompt lookup on an input-grounded task: "repeat and continue". Each prompt is a TinyStories
passage (~90 tokens) followed by a blank line and the passage's first words again; the story
model goes on copying the passage (and then continues it), which is what prompt lookup drafts.
A table of tokens/s for ordinary decoding and `--prompt-lookup N`, with the acceptance rate
and whether every greedy text was identical to ordinary decoding's.

Draft model: a much smaller model trained here with `gptcli train` on the TinyStories sample,
reusing the story model's tokenizer (`--tokenizer`), cached in --draft-dir. It speculates on
the same "repeat and continue" prompts and on free story continuation ("Once upon a time").

Each configuration is timed on every prompt in each round (rounds interleave the
configurations, so drift on a shared machine touches all of them alike); the figure is the
median over rounds of (tokens generated / seconds) summed over the prompts.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import SHARED  # noqa: E402

STORY = ROOT / "gptcli" / "bundled" / "tinystories"
DATA = SHARED / "tinystories-sample.txt"


def stories(count: int) -> list[str]:
    """TinyStories stories from the end of the sample (one paragraph of each, cleaned of newlines)."""
    text = DATA.read_text(encoding="utf-8")
    docs = [" ".join(d.split()) for d in text.split("<|endoftext|>") if len(d.split()) > 80]
    return docs[-count:]


def repeat_prompts(tok, count: int, passage_tokens: int = 90, lead: int = 8) -> list[str]:
    out = []
    for story in stories(count):
        ids = tok(story)["input_ids"][:passage_tokens]
        passage = tok.decode(ids)
        out.append(passage + "\n\n" + tok.decode(ids[:lead]))
    return out


def free_prompts(count: int) -> list[str]:
    starts = ["Once upon a time", "One day, a little girl named", "Tom and his dog", "The sun was hot and"]
    return [starts[i % len(starts)] for i in range(count)]


def timed(lm, prompts: list[str], new_tokens: int, spec) -> dict:
    from gptcli.generation import Completion, Request, RunStats, stream_generate
    from gptcli.sampling import SamplingParams

    texts, tokens, drafted, accepted = [], 0, 0, 0
    params = SamplingParams(temperature=0.0, max_new_tokens=new_tokens)
    started = time.perf_counter()
    for prompt in prompts:
        stats = RunStats()
        for event in stream_generate(lm, [Request(prompt=prompt, params=params)], stats=stats, speculation=spec):
            if isinstance(event, Completion):
                texts.append(event.text)
        tokens += stats.completion_tokens
        drafted += stats.drafted_tokens
        accepted += stats.accepted_tokens
    return {
        "seconds": time.perf_counter() - started,
        "tokens": tokens,
        "texts": texts,
        "drafted": drafted,
        "accepted": accepted,
    }


def compare(lm, title: str, prompts: list[str], configs: list[tuple[str, object]], new_tokens: int, rounds: int):
    results: dict[str, list[dict]] = {name: [] for name, _ in configs}
    for _, spec in configs:  # warm-up
        timed(lm, prompts[:1], 8, spec)
    for _ in range(rounds):
        for name, spec in configs:
            results[name].append(timed(lm, prompts, new_tokens, spec))
    base_name = configs[0][0]
    base_speed = statistics.median(r["tokens"] / r["seconds"] for r in results[base_name])
    base_texts = results[base_name][0]["texts"]
    print(f"\n{title}")
    print(f"{'decoding':34} {'tokens/s':>9} {'vs ordinary':>12} {'accepted':>9} {'same text':>10}")
    for name, _ in configs:
        runs = results[name]
        speed = statistics.median(r["tokens"] / r["seconds"] for r in runs)
        drafted, accepted = runs[0]["drafted"], runs[0]["accepted"]
        rate = f"{accepted / drafted:.0%}" if drafted else "-"
        same = all(r["texts"] == base_texts for r in runs)
        print(f"{name:34} {speed:9.1f} {speed / base_speed:11.2f}x {rate:>9} {'yes' if same else 'NO':>10}")


def train_draft(folder: Path, steps: int) -> Path:
    """A tiny Llama (2 layers, 64 wide, 0.36 M parameters) with the story model's tokenizer, trained
    by `gptcli train` for a few minutes (blocks of 128 tokens, 8 a step)."""
    if (folder / "model.safetensors").exists():
        return folder
    cmd = [
        sys.executable,
        "-m",
        "gptcli",
        "train",
        str(DATA),
        "--tokenizer",
        str(STORY),
        "--arch",
        "llama",
        "--preset",
        "tiny",
        "--block-size",
        "128",
        "--batch-size",
        "8",
        "--lr",
        "3e-3",
        "--eval-every",
        "0",
        "--steps",
        str(steps),
        "--out",
        str(folder),
        "--overwrite",  # a run cut short left the folder without weights
    ]
    print("training the draft model:", " ".join(cmd[2:]), flush=True)
    started = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    print(f"trained in {time.perf_counter() - started:.0f} s", flush=True)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--new-tokens", type=int, default=120)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--draft-dir", default=str(Path(tempfile.gettempdir()) / "gptcli-bench-draft"))
    ap.add_argument("--draft-steps", type=int, default=400)
    ap.add_argument("--only", choices=("lookup", "draft"), help="run one part only")
    args = ap.parse_args()

    import torch

    from gptcli.loading import open_model
    from gptcli.speculative import Speculation

    lm, _ = open_model(str(STORY))
    print(
        f"target: bundled tinystories ({sum(p.numel() for p in lm.model.parameters()) / 1e6:.1f} M parameters), "
        f"{lm.runtime.describe()}, {torch.get_num_threads()} thread(s); {args.new_tokens} new tokens per prompt, "
        f"greedy, median of {args.rounds} rounds"
    )
    repeat = repeat_prompts(lm.tokenizer, args.prompts)
    free = free_prompts(args.prompts)
    if args.only != "draft":
        lookups = [(f"prompt lookup, N={n}", Speculation(prompt_lookup=n)) for n in (3, 5, 8)]
        compare(
            lm,
            f'"Repeat and continue" ({len(repeat)} TinyStories passages of ~90 tokens)',
            repeat,
            [("ordinary (baseline)", None), *lookups],
            args.new_tokens,
            args.rounds,
        )
        compare(
            lm,
            f"Free story continuation ({len(free)} short prompts): little to copy",
            free,
            [("ordinary (baseline)", None), ("prompt lookup, N=3", Speculation(prompt_lookup=3))],
            args.new_tokens,
            args.rounds,
        )
    if args.only == "lookup":
        return
    threads = torch.get_num_threads()
    draft, _ = open_model(str(train_draft(Path(args.draft_dir), args.draft_steps)))
    torch.set_num_threads(threads)
    n_draft = sum(p.numel() for p in draft.model.parameters()) / 1e6
    configs = [("ordinary (baseline)", None)] + [
        (f"draft model ({n_draft:.1f} M), k={k}", Speculation(draft=draft, draft_tokens=k)) for k in (2, 4)
    ]
    compare(lm, "Draft model: repeat and continue", repeat, configs, args.new_tokens, args.rounds)
    compare(lm, "Draft model: free story continuation", free, configs, args.new_tokens, args.rounds)


if __name__ == "__main__":
    main()
