"""Translation throughput: the batched `translate` pipeline against one-line-at-a-time generation.

Same model, same lines, same greedy settings, same process:

  generate x N   one `stream_generate` call per line with that line's prompt — what
                 `gptcli generate "English: …\\nFrench:" --stop "\\n" --greedy` does for each line
  translate -b K the translate pipeline (sources, batching, in-order output) at batch size K

plus, end to end, `gptcli translate --file LINES` as a subprocess (start-up and model load included).

    python benchmarks/translate_speed.py                      # the bundled tiny-en-fr, 128 held-out lines
    python benchmarks/translate_speed.py --lines 64 --model ./my-model --from en --to fr --threads 2

The targets: batch 16 at least 4x the lines/s of one-line-at-a-time calls (issue 7); one short
sentence translated in at most 0.2 s after load (issue 16: the per-line latency printed last).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HELDOUT = ROOT / "benchmarks" / "data" / "eng-fra-heldout.tsv"


def source_lines(n: int) -> list[str]:
    seen: list[str] = []
    for row in HELDOUT.read_text(encoding="utf-8").splitlines():
        en = row.split("\t")[0]
        if en not in seen:
            seen.append(en)
    return (seen * (n // len(seen) + 1))[:n]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-en-fr")
    ap.add_argument("--from", dest="source", default="en")
    ap.add_argument("--to", dest="target", default="fr")
    ap.add_argument("--lines", type=int, default=128)
    ap.add_argument("--batch-sizes", default="1,4,16,32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--no-cli", action="store_true", help="skip the end-to-end subprocess run")
    args = ap.parse_args()

    from gptcli.generation import stream_generate
    from gptcli.loading import open_model
    from gptcli.sampling import SamplingParams
    from gptcli.translation.families import apply_plan, make_plan
    from gptcli.translation.languages import resolve
    from gptcli.translation.pipeline import Translator, one_line
    from gptcli.translation.sources import Line, LineFeed

    lines = source_lines(args.lines)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm, load_s = open_model(args.model, device="cpu", dtype=args.dtype, threads=args.threads)
    plan = make_plan(lm, resolve(args.source, "--from"), resolve(args.target, "--to"))
    apply_plan(lm, plan)
    params = SamplingParams(temperature=0.0)
    print(
        f"model {args.model} ({lm.runtime.describe()}), {len(lines)} lines, threads {args.threads}, "
        f"load {load_s:.2f} s",
        file=sys.stderr,
    )

    # Warm-up: first calls pay for lazy initialisation.
    warm = Translator(lm, plan, params, batch_size=4)
    list(warm.run(LineFeed([Line(i, t) for i, t in enumerate(lines[:4], 1)])))

    rows = []
    # One generate call per line, with exactly the request the pipeline would build.
    single = Translator(lm, plan, params, batch_size=1)
    started = time.perf_counter()
    outs_single = []
    per_line = []
    for text in lines:
        line_started = time.perf_counter()
        for ev in stream_generate(lm, [single.request(text)], batch_size=1):
            if hasattr(ev, "finish_reason"):
                outs_single.append(one_line(ev.text))
        per_line.append(time.perf_counter() - line_started)
    t_single = time.perf_counter() - started
    rows.append(("generate, one line per call", t_single, len(lines) / t_single, 1.0, len(lines)))

    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        tr = Translator(lm, plan, params, batch_size=bs)
        started = time.perf_counter()
        outs = [r.text for r in tr.run(LineFeed([Line(i, t) for i, t in enumerate(lines, 1)]))]
        elapsed = time.perf_counter() - started
        same = sum(a == b for a, b in zip(outs, outs_single))
        rows.append((f"translate -b {bs}", elapsed, len(lines) / elapsed, t_single / elapsed, same))

    if not args.no_cli:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "lines.txt"
            src.write_text("\n".join(lines) + "\n", encoding="utf-8")
            env = dict(os.environ, GPTCLI_THREADS=str(args.threads), HF_HUB_OFFLINE="1")
            cmd = [
                sys.executable,
                "-m",
                "gptcli",
                "translate",
                "--file",
                str(src),
                "-m",
                args.model,
                "--from",
                args.source,
                "--to",
                args.target,
                "-b",
                "16",
                "--device",
                "cpu",
            ]
            if args.dtype:
                cmd += ["--dtype", args.dtype]
            started = time.perf_counter()
            res = subprocess.run(cmd, capture_output=True, env=env)
            elapsed = time.perf_counter() - started
            if res.returncode != 0:
                print(res.stderr.decode(), file=sys.stderr)
                return 1
            n_out = len(res.stdout.decode("utf-8").splitlines())
            rows.append(
                (
                    "gptcli translate -b 16 (process, incl. start-up)",
                    elapsed,
                    len(lines) / elapsed,
                    t_single / elapsed,
                    n_out,
                )
            )

    print("| run | seconds | lines/s | vs one line per call | same lines as one-per-call |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, secs, lps, ratio, same in rows:
        print(f"| {name} | {secs:.2f} | {lps:.1f} | {ratio:.1f}x | {same}/{len(lines)} |")
    per_line.sort()
    median, worst = per_line[len(per_line) // 2], per_line[-1]
    verdict = "meets" if median <= 0.2 else "misses"
    print(
        f"\none line alone: median {median * 1000:.0f} ms, slowest {worst * 1000:.0f} ms ({verdict} the 0.2 s target)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
