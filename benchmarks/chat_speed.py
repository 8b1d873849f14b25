"""Chat speed: time to first token per turn in a long conversation, with and without KV-cache reuse.

    python benchmarks/chat_speed.py [--turns 10] [--model DIR] [--template] [--repeats 5] [--threads N]
                                    [--replies text|model|both]

By default builds a GPT-2-124M-shaped model with an 8k byte-level BPE vocabulary trained on
the TinyStories sample (random weights: no download), then holds a conversation of `--turns`
turns through `gptcli.chat.session.ChatSession` (the code behind `gptcli chat`): a system
prompt, 45-token user messages cut from TinyStories, 32-token replies.

For every turn it reports the prompt length, how many prompt tokens came from the cache kept
from the previous turn, and the time to first token (TTFT: building the prompt from the
conversation, then the forward passes up to the first new token) with that cache; and, for the
same prompt, the TTFT when the whole prompt is computed from scratch (what a fresh cache costs).
Each turn is then timed again `--repeats` times on both paths, in interleaved rounds, with the
cache put back in the state the turn found it in; the best time is the estimate least disturbed
by other work on a shared machine. The target: TTFT of the last turn within 1.5x of turn 1.

Two tables. With random weights a reply's text, tokenized again inside the next prompt, often
splits into other tokens than the ones generated, so part of each reply is fed again ("model"
replies: the pessimistic case). A trained model's replies usually tokenize back to the tokens
it generated; "text" replies (TinyStories sentences as the assistant's turns) measure that
case. `--template` uses a ChatML-style template instead of the plain fallback format.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import build_gpt2_124m  # noqa: E402

SYSTEM = "You are a friendly storyteller. Answer with short, simple stories for small children."
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_model(folder: Path) -> Path:
    """GPT-2 small's shape (12 layers, 12 heads, 768 wide, 1024 context) over an 8k vocabulary."""
    return build_gpt2_124m(folder, SHARED / "tinystories-sample.txt", vocab_size=None)


def story_chunks(tok, count: int, tokens: int, skip: int = 0) -> list[str]:
    """`count` consecutive pieces of TinyStories text, `tokens` tokens each (give or take one)."""
    text = (SHARED / "tinystories-sample.txt").read_text(encoding="utf-8")[skip : skip + 200_000]
    ids = tok(" ".join(text.replace("<|endoftext|>", " ").split()))["input_ids"]
    return [tok.decode(ids[i * tokens : (i + 1) * tokens]).strip() for i in range(count)]


def ttft(lm, ids: list[int], cache=None) -> float:
    """Seconds from the start of generation to the first new token (prefill of what is not cached)."""
    from gptcli.generation import Completion, Request, stream_generate
    from gptcli.sampling import SamplingParams

    request = Request(prompt_ids=ids, params=SamplingParams(max_new_tokens=1, seed=0))
    (done,) = [e for e in stream_generate(lm, [request], prompt_cache=cache) if isinstance(e, Completion)]
    return done.ttft_s


def converse(lm, messages: list[str], new_tokens: int) -> list[dict]:
    """Hold the conversation once, through ChatSession; record each turn's prompt and cache hit."""
    from gptcli.chat.history import Conversation
    from gptcli.chat.session import ChatSession
    from gptcli.sampling import SamplingParams

    session = ChatSession(lm, SamplingParams(max_new_tokens=new_tokens, seed=0), Conversation(system=SYSTEM))
    turns = []
    for text in messages:
        done = session.send(text).completion
        # The prompt this turn saw (the conversation without the reply just added), and the time
        # the session takes to build it (render + tokenize): it comes before the model's TTFT.
        t = time.perf_counter()
        ids = session.format.ids(session.conv.system, session.conv.messages[session.window_start : -1])
        build = time.perf_counter() - t
        assert len(ids) == done.prompt_tokens
        turns.append({"ids": ids, "cached": done.cached_tokens, "build": build})
    return turns


def converse_text(lm, messages: list[str], replies: list[str], new_tokens: int) -> list[dict]:
    """The same conversation with written replies instead of generated ones, as from a trained model.

    A trained model's reply, tokenized again inside the next prompt, usually gives back the
    tokens it generated; the cache then holds the previous prompt and the reply, and a turn
    feeds only the template's glue and the new message. That is the state each turn starts from
    here (the longest shared prefix of the next prompt and the conversation up to the reply).
    """
    from gptcli.chat.history import Conversation, Message
    from gptcli.chat.session import ChatSession
    from gptcli.sampling import SamplingParams

    session = ChatSession(lm, SamplingParams(max_new_tokens=new_tokens), Conversation(system=SYSTEM))
    turns, before = [], []
    for text, reply in zip(messages, replies):
        session.conv.messages.append(Message("user", text))
        t = time.perf_counter()
        ids = session.prompt_ids()
        build = time.perf_counter() - t
        hit = 0
        while hit < min(len(before), len(ids) - 1) and before[hit] == ids[hit]:
            hit += 1
        turns.append({"ids": ids, "cached": hit, "build": build})
        session.conv.messages.append(Message("assistant", reply))
        before = session.format.ids(session.conv.system, session.conv.messages[session.window_start :])
    return turns


def time_turns(lm, turns: list[dict], repeats: int) -> list[tuple[list[float], list[float]]]:
    """TTFT of each turn's prompt, with the cache as the session had it and fresh.

    Rounds go over all turns and both paths, interleaved, so a burst of other work on the
    machine lands on every turn alike instead of spoiling one.
    """
    from gptcli.kvcache import PromptCache

    caches = [PromptCache() for _ in turns]
    out = [([], []) for _ in turns]
    for _ in range(repeats):
        for turn, cache, (reuse, fresh) in zip(turns, caches, out):
            ids, hit = turn["ids"], turn["cached"]
            # Put the cache back in the state the turn found it in: its first `hit` tokens (not timed).
            if not hit:
                cache.reset()
            elif cache.prepare(lm.model, ids[:hit] + [0]) != hit:
                ttft(lm, ids[:hit], cache)
            reuse.append(ttft(lm, ids, cache) + turn["build"])
            fresh.append(ttft(lm, ids) + turn["build"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model folder or name (default: a GPT-2-124M-shaped random model)")
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5, help="timings per turn and path; best and median shown")
    ap.add_argument("--template", action="store_true", help="use a ChatML-style chat template")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--replies",
        choices=["text", "model", "both"],
        default="both",
        help="written replies (as a trained model's), generated ones, or both tables",
    )
    args = ap.parse_args()

    from gptcli.cli.output import describe_load
    from gptcli.loading import open_model

    model = args.model or str(build_model(Path(tempfile.gettempdir()) / "gptcli-bench-chat-gpt2-124m"))
    lm, load_s = open_model(model, dtype=args.dtype, threads=args.threads)
    if args.template:
        lm.tokenizer.chat_template, lm.has_chat_template = CHATML, True
    print(describe_load(lm, load_s), file=sys.stderr)
    messages = story_chunks(lm.tokenizer, args.turns, 45)
    replies = story_chunks(lm.tokenizer, args.turns, args.new_tokens, skip=500_000)
    converse(lm, messages[:2], 8)  # warm-up: first-call allocations and oneDNN kernels
    modes = ["text", "model"] if args.replies == "both" else [args.replies]
    fmt = "plain fallback format" if not lm.has_chat_template else "chat template"
    print(
        f"\n{lm.name}, {str(lm.runtime.dtype).replace('torch.', '')} on {lm.runtime.device}, {fmt}, "
        f"{torch_threads()} thread(s); {args.turns} turns, 45-token messages, {args.new_tokens}-token replies"
    )
    for mode in modes:
        started = time.perf_counter()
        if mode == "text":
            turns = converse_text(lm, messages, replies, args.new_tokens)
        else:
            turns = converse(lm, messages, args.new_tokens)
        timings = time_turns(lm, turns, args.repeats)
        report(mode, turns, timings, args, time.perf_counter() - started)


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def report(mode: str, turns: list[dict], timings: list, args, wall: float) -> None:
    title = {
        "text": "replies written out (they tokenize back to the same tokens, as a trained model's do)",
        "model": "replies generated by the model (with random weights part of each is fed again)",
    }[mode]
    print(f"\n{title}; TTFT in ms, best (median) of {args.repeats}, {wall:.0f} s")
    print(
        f"{'turn':>4} {'prompt tok':>10} {'cached':>7} {'fed':>5} {'TTFT, cache kept':>18} {'TTFT, fresh':>16} "
        f"{'kept vs turn 1':>15}"
    )
    first = min(timings[0][0])
    for i, (turn, (reuse, fresh)) in enumerate(zip(turns, timings)):
        prompt, cached = len(turn["ids"]), turn["cached"]
        kept = f"{min(reuse) * 1000:.0f} ({statistics.median(reuse) * 1000:.0f})"
        scratch = f"{min(fresh) * 1000:.0f} ({statistics.median(fresh) * 1000:.0f})"
        print(
            f"{i + 1:>4} {prompt:>10} {cached:>7} {prompt - cached:>5} {kept:>18} {scratch:>16} "
            f"{min(reuse) / first:>14.2f}x"
        )
    last = min(timings[-1][0])
    verdict = "meets" if last <= 1.5 * first else "misses"
    print(
        f"turn {args.turns} TTFT is {last / first:.2f}x turn 1 with the cache kept ({verdict} the 1.5x target); "
        f"computed from scratch it is {min(timings[-1][1]) / min(timings[0][1]):.2f}x."
    )


if __name__ == "__main__":
    main()
