"""Chat speed: time to first token per turn in a long conversation, with and without KV-cache reuse.

    python benchmarks/chat_speed.py [--turns 10] [--model DIR] [--template] [--repeats 3]

By default builds a GPT-2-124M-shaped model with an 8k byte-level BPE vocabulary trained on
the TinyStories sample (random weights: no download), then holds a conversation of `--turns`
turns through `gptcli.chat.session.ChatSession` (the code behind `gptcli chat`): a system
prompt, user messages of ~45 tokens drawn from TinyStories, 32-token replies.

For every turn it reports the prompt length, how many prompt tokens came from the cache kept
from the previous turn, and the time to first token (TTFT) with that cache; and, for the same
prompt, the TTFT when the whole prompt is computed from scratch (what a fresh cache costs).
The target: TTFT of the last turn within 1.5x of turn 1.

With random weights a reply's text, tokenized again inside the next prompt, may split into
other tokens than the ones generated, so part of the reply is fed again; a trained model's
replies usually round-trip exactly and reuse more. `--template` uses a ChatML-style template
instead of the plain fallback format.
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

SYSTEM = "You are a friendly storyteller. Answer with short, simple stories for small children."
CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_model(folder: Path) -> Path:
    """GPT-2 small's shape (12 layers, 12 heads, 768 wide, 1024 context) over an 8k vocabulary."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    if (folder / "model.safetensors").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=8192, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([str(SHARED / "tinystories-sample.txt")], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = GPT2Config(n_layer=12, n_head=12, n_embd=768, vocab_size=len(fast), n_positions=1024,
                        bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def user_messages(tok, turns: int, tokens: int = 45) -> list[str]:
    """Consecutive TinyStories sentences, about `tokens` tokens per message."""
    text = (SHARED / "tinystories-sample.txt").read_text(encoding="utf-8").replace("<|endoftext|>", " ")
    sentences = [s.strip() + "." for s in text.split(".") if len(s.strip()) > 20]
    out, current = [], ""
    for s in sentences:
        current = f"{current} {s}".strip()
        if len(tok(current)["input_ids"]) >= tokens:
            out.append(current)
            current = ""
            if len(out) == turns:
                break
    return out


def fresh_ttft(lm, ids: list[int]) -> float:
    """TTFT of the same prompt computed from scratch (no cache): one forward over all of it."""
    from gptcli.generation import Completion, Request, stream_generate
    from gptcli.sampling import SamplingParams

    (done,) = [e for e in stream_generate(lm, [Request(prompt_ids=ids, params=SamplingParams(max_new_tokens=1, seed=0))])
               if isinstance(e, Completion)]
    return done.ttft_s


def run(lm, messages: list[str], new_tokens: int) -> list[dict]:
    from gptcli.chat.history import Conversation
    from gptcli.chat.session import ChatSession
    from gptcli.sampling import SamplingParams

    session = ChatSession(lm, SamplingParams(max_new_tokens=new_tokens, seed=0), Conversation(system=SYSTEM))
    rows = []
    for turn, text in enumerate(messages, start=1):
        done = session.send(text).completion
        # The prompt this turn saw (the conversation without the reply just added).
        ids = session.format.ids(session.conv.system, session.conv.messages[session.window_start:-1])
        rows.append({"turn": turn, "prompt": done.prompt_tokens, "cached": done.cached_tokens,
                     "reply": done.completion_tokens, "ttft": done.ttft_s, "fresh": fresh_ttft(lm, ids)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model folder or name (default: a GPT-2-124M-shaped random model)")
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="whole conversations; the table shows medians")
    ap.add_argument("--template", action="store_true", help="use a ChatML-style chat template")
    ap.add_argument("--dtype", default=None)
    args = ap.parse_args()

    from gptcli.session import describe_load, open_model

    model = args.model or str(build_model(Path(tempfile.gettempdir()) / "gptcli-bench-chat-gpt2-124m"))
    lm, load_s = open_model(model, dtype=args.dtype)
    if args.template:
        lm.tokenizer.chat_template, lm.has_chat_template = CHATML, True
    print(describe_load(lm, load_s), file=sys.stderr)
    messages = user_messages(lm.tokenizer, args.turns)
    run(lm, messages[:2], 8)  # warm-up: first-call allocations and oneDNN kernels
    started = time.perf_counter()
    repeats = [run(lm, messages, args.new_tokens) for _ in range(args.repeats)]
    wall = time.perf_counter() - started

    def median(turn: int, key: str) -> float:
        return statistics.median(r[turn][key] for r in repeats)

    fmt = "plain fallback format" if not lm.has_chat_template else "chat template"
    print(f"\n{lm.name}, {str(lm.runtime.dtype).replace('torch.', '')} on {lm.runtime.device}, {fmt}; "
          f"{args.turns} turns, {args.new_tokens}-token replies, median of {args.repeats} conversations ({wall:.0f} s)")
    print(f"{'turn':>4} {'prompt tok':>10} {'cached':>7} {'fed':>5} {'TTFT reuse ms':>14} {'TTFT fresh ms':>14} "
          f"{'reuse vs turn 1':>16}")
    first = median(0, "ttft")
    for i in range(args.turns):
        prompt, cached = repeats[0][i]["prompt"], repeats[0][i]["cached"]
        ttft, fresh = median(i, "ttft"), median(i, "fresh")
        print(f"{i + 1:>4} {prompt:>10} {cached:>7} {prompt - cached:>5} {ttft * 1000:>14.1f} {fresh * 1000:>14.1f} "
              f"{ttft / first:>15.2f}x")
    last = median(args.turns - 1, "ttft")
    verdict = "meets" if last <= 1.5 * first else "misses"
    print(f"\nturn {args.turns} TTFT is {last / first:.2f}x turn 1 with the cache kept ({verdict} the 1.5x target); "
          f"computed from scratch it would be {median(args.turns - 1, 'fresh') / median(0, 'fresh'):.2f}x.")


if __name__ == "__main__":
    main()
