"""Training speed: `gptcli train` against a minimal PyTorch loop over GPT2LMHeadModel, in the same run.

The nanoGPT CPU "baby" configuration: character-level tinyshakespeare (90/10 split), 4 layers,
4 heads, 128 wide, block 64, batch 12, AdamW lr 1e-3 betas (0.9, 0.99) weight decay 0.1, grad
clip 1.0, 100 warmup steps and cosine decay to 1e-4, dropout 0, 2,000 iterations.

Both trainers see the same batches (gptcli's packing and sampler are reused by the loop) and are
scored by the same validation function (200 batches spread over the validation split). Each runs
in its own process; --repeat alternates the order (A B, B A, ...) because the machine is noisy.

    python benchmarks/train_speed.py                 # full 2,000 iterations, both trainers
    python benchmarks/train_speed.py --iters 300     # a quicker speed-only look
    python benchmarks/train_speed.py --precision fp32 --repeat 2
    python benchmarks/train_speed.py --seed 1                   # the spread between seeds
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, emit, parse_result  # noqa: E402

DATA = SHARED / "tinyshakespeare.txt"
SHAPE = dict(n_layer=4, n_head=4, n_embd=128, block_size=64)
BATCH, LR, MIN_LR, WARMUP, SEED, EVAL_BATCHES = 12, 1e-3, 1e-4, 100, 1337, 200


def gptcli_worker(iters: int, precision: str, out: Path, seed: int = SEED) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "gptcli",
        "train",
        str(DATA),
        "--tokenizer-type",
        "char",
        "--val-split",
        "0.1",
        "--n-layer",
        "4",
        "--n-head",
        "4",
        "--n-embd",
        "128",
        "--block-size",
        "64",
        "--dropout",
        "0",
        "--batch-size",
        str(BATCH),
        "--lr",
        str(LR),
        "--min-lr",
        str(MIN_LR),
        "--beta2",
        "0.99",
        "--weight-decay",
        "0.1",
        "--grad-clip",
        "1.0",
        "--warmup",
        str(WARMUP),
        "--steps",
        str(iters),
        "--eval-every",
        "0",
        "--save-every",
        "0",
        "--eval-batches",
        str(EVAL_BATCHES),
        "--log-every",
        "100",
        "--seed",
        str(seed),
        "--precision",
        precision,
        "--out",
        str(out),
        "--overwrite",
        "--json",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    summary = json.loads(proc.stdout)
    return {"ms_per_iter": summary["ms_per_step"], "val_loss": summary["final_val_loss"], "wall_s": summary["wall_s"]}


def plain_loop(iters: int, seed: int = SEED) -> dict:
    """What a user would write by hand: default GPT2 config, default AdamW, loss.backward()."""
    import torch
    import torch.nn.functional as F
    from transformers import GPT2Config, GPT2LMHeadModel

    from gptcli.training import packing
    from gptcli.training.engine import evaluate
    from gptcli.training.optim import lr_lambda
    from gptcli.training.sampler import BlockSampler
    from gptcli.training.tokenizer import encode_documents, make_tokenizer

    text = DATA.read_text(encoding="utf-8")
    tok = make_tokenizer("char", [text], 0)
    ids, _ = packing.stream(encode_documents(tok, [text]), tok.eos_token_id)
    train, val = packing.split(ids, None, 0.1, SHAPE["block_size"])
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=SHAPE["block_size"],
        n_embd=SHAPE["n_embd"],
        n_layer=SHAPE["n_layer"],
        n_head=SHAPE["n_head"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = GPT2LMHeadModel(config)
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(iters, WARMUP, "cosine", MIN_LR / LR))
    sampler = BlockSampler(len(train), BATCH, 1, 1, 0, seed, block_size=SHAPE["block_size"], stream_len=len(train.ids))
    model.train()
    t0 = time.perf_counter()
    for it in range(iters):
        x, y = train.batch_at(sampler.starts(it, 0))
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if (it + 1) % 100 == 0:
            loss.item()  # a loop logs its loss now and then, like gptcli's progress lines
    elapsed = time.perf_counter() - t0
    from contextlib import nullcontext

    val_loss = evaluate(model, val, BATCH, EVAL_BATCHES, torch.device("cpu"), nullcontext)
    return {
        "ms_per_iter": round(1000 * elapsed / iters, 3),
        "val_loss": round(val_loss, 6),
        "wall_s": round(elapsed, 3),
    }


def run_worker(kind: str, iters: int, precision: str, seed: int = SEED) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--iters",
        str(iters),
        "--precision",
        precision,
        "--seed",
        str(seed),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    return parse_result(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument(
        "--precision", default="auto", help="gptcli's --precision (auto: bf16 autocast on CPUs with native bf16)"
    )
    ap.add_argument("--repeat", type=int, default=1, help="rounds; the order alternates each round")
    ap.add_argument("--only", choices=["plain", "gptcli"], help="run one trainer only")
    ap.add_argument("--seed", type=int, default=SEED, help="seed of both trainers (nanoGPT's 1337 by default)")
    ap.add_argument("--worker", choices=["plain", "gptcli"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "plain":
        emit(plain_loop(args.iters, args.seed))
        return
    if args.worker == "gptcli":
        with tempfile.TemporaryDirectory() as tmp:
            emit(gptcli_worker(args.iters, args.precision, Path(tmp) / "run", args.seed))
        return

    rows = {"plain": [], "gptcli": []}
    for r in range(args.repeat):
        order = ["plain", "gptcli"] if r % 2 == 0 else ["gptcli", "plain"]
        for kind in order:
            if args.only and kind != args.only:
                continue
            res = run_worker(kind, args.iters, args.precision, args.seed)
            rows[kind].append(res)
            print(
                f"round {r + 1} {kind:7s} {res['ms_per_iter']:8.2f} ms/iter  val loss {res['val_loss']:.4f}",
                file=sys.stderr,
                flush=True,
            )
    if args.only:
        return
    plain_ms = sum(r["ms_per_iter"] for r in rows["plain"]) / len(rows["plain"])
    print(
        f"\n{args.iters} iterations, threads={os.environ.get('OMP_NUM_THREADS', 'default')}, "
        f"gptcli --precision {args.precision}\n"
    )
    print("| trainer | ms/iteration | × plain loop | validation loss |")
    print("| --- | --- | --- | --- |")
    for kind, label in (("plain", "plain PyTorch loop over GPT2LMHeadModel"), ("gptcli", "gptcli train")):
        ms = sum(r["ms_per_iter"] for r in rows[kind]) / len(rows[kind])
        val = rows[kind][-1]["val_loss"]
        print(f"| {label} | {ms:.1f} | {ms / plain_ms:.2f} | {val:.3f} |")


if __name__ == "__main__":
    main()
