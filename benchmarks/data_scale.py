"""Training and evaluation on corpora larger than memory: the token cache (issue #13).

For each corpus size (synthesized from ../shared/data by repeating it with variation; never
committed) this measures, each in a fresh process:

- raw: `tokenizers` encode_batch on the same text, all cores, in one process (MB/s): the ceiling;
- prepare: `gptcli prepare` into an empty cache (MB/s, and the ratio to raw);
- train: `gptcli train --preset tiny --steps 50` on the prepared cache: peak RSS and the time from
  process start to the first training step (a cache hit);
- eval: `gptcli eval` of that model on the corpus through the cache, with --max-tokens, and (with
  --full-eval) without it for --eval-seconds, streaming --per-doc records: peak RSS, wall time,
  and how many per-document records had reached stdout when it was stopped;
- nanogpt (with --nanogpt): nanoGPT's data/openwebtext/prepare.py design on the same text (documents
  through `datasets.Dataset.map(batched=True, num_proc=2)`, each encoded plus the eot id, then
  concatenated into one uint16 np.memmap), with our tokenizer in place of tiktoken (MB/s).

    python benchmarks/data_scale.py --sizes-mb 20,100          # what a shared 2-core machine allows
    python benchmarks/data_scale.py --sizes-mb 100,1000 --full-eval --nanogpt   # the issue's targets

A 1 GB prepare takes a quarter of an hour on two quiet cores: `--phase prepare` (corpora, raw,
prepare, nanogpt) and `--phase use` (train and eval on those caches) split the run over two calls
with the same --workdir. Where even that is too slow (a shared, loaded machine), `--tile` makes each
larger corpus an exact repetition of the first (smallest) one and assembles its token cache from the
first one's cache repeated (the same tokens a prepare would write, since every copy ends with a
document separator): train and eval are then measured at the full size, and the preparation
throughput only at the first, where it is measured (streaming, it does not depend on the size).

The BPE tokenizer is trained once on a 5 MB sample (outside the measurements) and passed
with --tokenizer, so every step tokenizes with the same one.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, emit  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

MEASURE = r"""
import resource, signal, subprocess, sys, threading, time, json
stop_after = float(sys.argv[1])  # seconds; 0: run to the end
t0 = time.perf_counter()
p = subprocess.Popen(sys.argv[2:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
first = None
first_out = None
err, out = [], []
lines = 0


def read_stdout():
    global first_out, lines
    for line in p.stdout:
        if first_out is None:
            first_out = time.perf_counter() - t0
        lines += 1
        out.append(line)
        del out[:-50]


reader = threading.Thread(target=read_stdout)
reader.start()
if stop_after:
    threading.Timer(stop_after, lambda: p.poll() is None and p.send_signal(signal.SIGTERM)).start()
for line in p.stderr:
    err.append(line)
    if first is None and line.lstrip().startswith("step "):
        first = time.perf_counter() - t0
reader.join()
code = p.wait()
stopped = bool(stop_after) and code in (-signal.SIGTERM, 130)  # gptcli stops on SIGTERM like Ctrl-C
print(json.dumps({"code": 0 if stopped else code, "wall_s": time.perf_counter() - t0, "first_step_s": first,
                  "first_stdout_s": first_out, "stdout_lines": lines, "stopped": stopped,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  "stdout": "".join(out)[-2000:], "stderr": "".join(err)[-2000:]}))
"""

RAW = r"""
import sys, time
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[2])
text = open(sys.argv[1], encoding="utf-8").read()
# pieces of ~16 KB cut at newlines, as a user of encode_batch would hand it a big file
pieces, start, n = [], 0, len(text)
while start < n:
    end = text.find("\n", start + 16384)
    end = n if end == -1 else end + 1
    pieces.append(text[start:end])
    start = end
t0 = time.perf_counter()
tokens = 0
for i in range(0, len(pieces), 256):
    tokens += sum(len(e.ids) for e in tok.encode_batch(pieces[i:i + 256], add_special_tokens=False))
dt = time.perf_counter() - t0
print(dt, tokens)
"""


NANOGPT = r"""
import sys, time
import numpy as np
import datasets
from tokenizers import Tokenizer

datasets.disable_progress_bars()
path, tok_file, out = sys.argv[1:4]
t0 = time.perf_counter()
docs = [d.strip("\n") for d in open(path, encoding="utf-8").read().split("<|endoftext|>")]
docs = [d for d in docs if d.strip()]
ds = datasets.Dataset.from_dict({"text": docs})
del docs
eot = Tokenizer.from_file(tok_file).token_to_id("<|endoftext|>")


def process(batch):  # prepare.py's process(): encode_ordinary, then the eot after each document
    tok = Tokenizer.from_file(tok_file)
    ids = [e.ids + [eot] for e in tok.encode_batch(batch["text"], add_special_tokens=False)]
    return {"ids": ids, "len": [len(x) for x in ids]}


tokenized = ds.map(process, batched=True, remove_columns=["text"], num_proc=2)
# prepare.py's write: one uint16 memmap, filled shard by shard
arr_len = int(np.sum(tokenized["len"], dtype=np.uint64))
arr = np.memmap(out, dtype=np.uint16, mode="w+", shape=(arr_len,))
idx = 0
total_batches = 64
for b in range(total_batches):
    batch = tokenized.shard(num_shards=total_batches, index=b, contiguous=True).with_format("numpy")
    arr_batch = np.concatenate(batch["ids"])
    arr[idx : idx + len(arr_batch)] = arr_batch
    idx += len(arr_batch)
arr.flush()
print(time.perf_counter() - t0, arr_len)
"""


def synthesize(path: Path, size_mb: float, seed: int = 0) -> Path:
    """Stories and plays from ../shared/data, shuffled and with names swapped, until size_mb."""
    if path.exists() and path.stat().st_size >= size_mb * 1e6:
        return path
    rng = random.Random(seed)
    stories = (SHARED / "tinystories-sample.txt").read_text(encoding="utf-8").split("<|endoftext|>")
    plays = (SHARED / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n\n")
    docs = [d.strip("\n") for d in stories + plays if d.strip()]
    names = ["Lily", "Tom", "Ben", "Mia", "Sam", "Anna", "Max", "Zoe", "Leo", "Ivy", "Kai", "Nora"]
    target = int(size_mb * 1e6)
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            rng.shuffle(docs)
            a, b = rng.choice(names), rng.choice(names)
            for d in docs:
                chunk = d.replace("Lily", a).replace("Tom", b) + "\n<|endoftext|>\n"
                f.write(chunk)
                written += len(chunk.encode("utf-8"))
                if written >= target:
                    break
    return path


def repeat(src: Path, dst: Path, times: int) -> Path:
    """dst: `times` copies of src back to back (src ends with a document separator line)."""
    if dst.exists() and dst.stat().st_size == src.stat().st_size * times:
        return dst
    with open(dst, "wb") as out:
        for _ in range(times):
            with open(src, "rb") as f:
                shutil.copyfileobj(f, out, 16 << 20)
    return dst


def tile_cache(first_cache: Path, corpus: Path, cache: Path, times: int) -> None:
    """The token cache entry of `corpus` (`times` copies of the first corpus) from the first corpus's
    entry repeated: its documents `times` over, offsets shifted, a manifest fingerprinting `corpus`."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from gptcli import tokcache

    (man_path,) = first_cache.rglob(tokcache.MANIFEST)
    man = json.loads(man_path.read_text())
    src = man_path.parent
    dst = cache / tokcache.dataset_key([corpus], man["text_field"]) / src.name
    if (dst / tokcache.MANIFEST).exists():
        return
    shutil.rmtree(dst.parent, ignore_errors=True)
    tmp = dst.with_name(dst.name + ".tmp-tile")
    tmp.mkdir(parents=True)
    tokens = np.fromfile(src / tokcache.TOKENS, dtype=man["dtype"])
    ends = np.fromfile(src / tokcache.DOCS, dtype=np.uint64)
    with open(tmp / tokcache.TOKENS, "wb") as ft, open(tmp / tokcache.DOCS, "wb") as fd:
        for i in range(times):
            tokens.tofile(ft)
            (ends + np.uint64(i * len(tokens))).tofile(fd)
    source = tokcache.source_print(corpus)
    source["content_sha256"] = tokcache.file_sha256(corpus)
    man.update(tokens=len(tokens) * times, documents=len(ends) * times, sources=[source], tiled_from=str(src))
    (tmp / tokcache.MANIFEST).write_text(json.dumps(man, indent=1) + "\n")
    tmp.rename(dst)


def measure(*cmd: str, env: dict | None = None, stop_after: float = 0.0) -> dict:
    """Run cmd in a fresh process: its peak RSS, wall time, first training step and stdout lines.
    With `stop_after`, it is stopped (SIGTERM) after that many seconds if still running."""
    p = subprocess.run(
        [sys.executable, "-c", MEASURE, str(stop_after), *cmd], capture_output=True, text=True, env=env, cwd=ROOT
    )
    result = json.loads(p.stdout)
    if result["code"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result['stderr']}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes-mb", default="100,1000", help="corpus sizes in MB, comma-separated")
    ap.add_argument(
        "--workdir", type=Path, default=None, help="where corpora, caches and runs go (default: a temp folder)"
    )
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument(
        "--full-eval", action="store_true", help="also eval without --max-tokens (stopped after --eval-seconds)"
    )
    ap.add_argument("--eval-seconds", type=float, default=120.0, help="how long the eval without --max-tokens runs")
    ap.add_argument("--nanogpt", action="store_true", help="also time nanoGPT's prepare.py design on the same text")
    ap.add_argument("--phase", choices=["all", "prepare", "use"], default="all")
    ap.add_argument(
        "--tile", action="store_true", help="larger corpora and caches as repetitions of the first size's (see above)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    if args.phase != "all" and args.workdir is None:
        raise SystemExit("--phase prepare/use needs --workdir")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="gptcli-data-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    gptcli = [sys.executable, "-m", "gptcli"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", NO_COLOR="1")
    env.pop("TOKENIZERS_PARALLELISM", None)  # all cores, as a user gets them
    try:
        sample = synthesize(work / "sample.txt", 5, seed=99)
        tok_dir = work / "tokenizer"
        if not tok_dir.exists():
            sys.path.insert(0, str(ROOT))
            from gptcli.training import tokenizer as toks

            toks.train_bpe(sample.read_text(encoding="utf-8").split("<|endoftext|>"), 8192).save_pretrained(tok_dir)
        rows = []
        sizes = [float(s) for s in args.sizes_mb.split(",")]
        for size in sizes:
            cache = work / f"cache-{size:g}"
            saved = work / f"prepare-{size:g}.json"
            if args.tile and size != sizes[0]:
                first = work / f"corpus-{sizes[0]:g}MB.txt"
                corpus = repeat(first, work / f"corpus-{size:g}MB-tiled.txt", round(size / sizes[0]))
            else:
                corpus = synthesize(work / f"corpus-{size:g}MB.txt", size)
            if args.tile and size != sizes[0]:
                tile_cache(work / f"cache-{sizes[0]:g}", corpus, cache, round(size / sizes[0]))
                row = {"size_mb": round(corpus.stat().st_size / 1e6, 1), "tiled": True}
            elif args.phase == "use":  # the prepare phase's figures, if it has finished
                row = json.loads(saved.read_text()) if saved.exists() else {"size_mb": round(size, 1)}
            else:
                row = prepare_phase(corpus, tok_dir, cache, work, gptcli, env, args.nanogpt)
                saved.write_text(json.dumps(row))
            if args.phase != "prepare":
                row.update(use_phase(corpus, tok_dir, cache, work / f"run-{size:g}", gptcli, env, args))
            print(json.dumps(row), flush=True)
            rows.append(row)
        emit({"rows": rows})
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def prepare_phase(
    corpus: Path, tok_dir: Path, cache: Path, work: Path, gptcli: list[str], env: dict, nanogpt: bool
) -> dict:
    mb = corpus.stat().st_size / 1e6
    raw = subprocess.run(
        [sys.executable, "-c", RAW, str(corpus), str(tok_dir / "tokenizer.json")],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout.split()
    raw_mb_s = mb / float(raw[0])
    shutil.rmtree(cache, ignore_errors=True)
    prep = measure(
        *gptcli, "prepare", str(corpus), "--tokenizer", str(tok_dir), "--cache", str(cache), "--json", env=env
    )
    prep_s = json.loads(prep["stdout"])["data"]["seconds"]
    row = {
        "size_mb": round(mb, 1),
        "raw_encode_batch_mb_s": round(raw_mb_s, 2),
        "prepare_mb_s": round(mb / prep_s, 2),
        "prepare_vs_raw": round(mb / prep_s / raw_mb_s, 2),
        "prepare_peak_rss_mb": round(prep["peak_rss_mb"]),
    }
    if nanogpt:
        out = work / "nanogpt-train.bin"
        ng = measure(sys.executable, "-c", NANOGPT, str(corpus), str(tok_dir / "tokenizer.json"), str(out), env=env)
        seconds, tokens = ng["stdout"].split()
        out.unlink(missing_ok=True)
        row.update(
            nanogpt_mb_s=round(mb / float(seconds), 2),
            nanogpt_vs_raw=round(mb / float(seconds) / raw_mb_s, 2),
            nanogpt_peak_rss_mb=round(ng["peak_rss_mb"]),
            nanogpt_tokens=int(tokens),
            prepare_tokens=json.loads(prep["stdout"])["data"]["tokens"],
        )
    return row


def use_phase(corpus: Path, tok_dir: Path, cache: Path, out: Path, gptcli: list[str], env: dict, args) -> dict:
    train = measure(
        *gptcli,
        "train",
        str(corpus),
        "--tokenizer",
        str(tok_dir),
        "--cache",
        str(cache),
        "--preset",
        "tiny",
        "--steps",
        str(args.steps),
        "--log-every",
        "1",
        "--out",
        str(out),
        "--overwrite",
        env=env,
    )
    row = {
        "train_peak_rss_mb": round(train["peak_rss_mb"]),
        "train_first_step_s_cache_hit": round(train["first_step_s"] or -1, 2),
    }
    ev = measure(
        *gptcli, "eval", str(corpus), "-m", str(out), "--cache", str(cache), "--max-tokens", "20000", "--json", env=env
    )
    row.update(eval_max_tokens_peak_rss_mb=round(ev["peak_rss_mb"]), eval_max_tokens_wall_s=round(ev["wall_s"], 1))
    if args.full_eval:
        ev = measure(
            *gptcli,
            "eval",
            str(corpus),
            "-m",
            str(out),
            "--cache",
            str(cache),
            "--per-doc",
            env=env,
            stop_after=args.eval_seconds,
        )
        row.update(
            eval_full_peak_rss_mb=round(ev["peak_rss_mb"]),
            eval_full_seconds=round(ev["wall_s"], 1),
            eval_full_docs_streamed=ev["stdout_lines"],
            eval_full_first_record_s=round(ev["first_stdout_s"] or -1, 2),
        )
    return row


if __name__ == "__main__":
    main()
