"""One conversation with a loaded model: turns, context trimming and KV-cache reuse.

`ChatSession.send` adds the user's message, builds the prompt for the part of the
conversation that fits the context, streams the reply through the shared generation core and
records it (in memory and in the `--history` file). The same `PromptCache` follows every turn,
so a turn costs only the tokens that are new since the previous one.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gptcli.chat.history import Conversation, HistoryFile, Message
from gptcli.chat.prompt import ChatFormat
from gptcli.errors import GptcliError, InputError, UsageError
from gptcli.interrupts import Terminated
from gptcli.sampling import SamplingParams, coerce

if TYPE_CHECKING:
    from gptcli.generation import Completion, RunStats
    from gptcli.loading import LoadedModel
    from gptcli.remote import RemoteModel
    from gptcli.speculative import Speculation

# The sampling settings chat uses (`/set NAME VALUE`); the others make no sense for a single reply.
SETTABLE = ("max_new_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "greedy", "stop", "seed")
NOT_SETTABLE = ("num_return_sequences", "num_beams")


@dataclass
class Turn:
    reply: Message
    completion: Completion | None  # None when interrupted
    stats: RunStats  # of this turn
    terminated: bool = False  # stopped by SIGTERM: the caller must stop too, not carry on

    @property
    def interrupted(self) -> bool:
        return self.reply.interrupted

    def to_record(self, model: str) -> dict[str, Any]:
        """The `chat --json` object for this reply."""
        out: dict[str, Any] = {"role": "assistant", "content": self.reply.content}
        done = self.completion
        if done is None:
            out.update(finish_reason="interrupted", interrupted=True, model=model)
            return out
        out.update(
            finish_reason=done.finish_reason,
            prompt_tokens=done.prompt_tokens,
            cached_tokens=done.cached_tokens,
            completion_tokens=done.completion_tokens,
            seed=done.seed,
            model=model,
            ttft_s=round(done.ttft_s, 4),
            tokens_per_s=round(done.tokens_per_s, 2),
            elapsed_s=round(done.elapsed_s, 4),
        )
        if done.speculative:
            out.update(drafted_tokens=done.drafted_tokens, accepted_tokens=done.accepted_tokens)

        out.update(done.usage())  # null counts when a remote server sent none
        return out


class TrimmedStream:
    """Passes streamed text on without leading or trailing whitespace: exactly the stored reply."""

    def __init__(self, write: Callable[[str], None]):
        self.write = write
        self.started = False
        self.pending = ""  # whitespace held back until something follows it

    def __call__(self, text: str) -> None:
        if not self.started:
            text = text.lstrip()
            if not text:
                return
            self.started = True
        body = text.rstrip()
        if body:
            self.write(self.pending + body)
            self.pending = text[len(body) :]
        else:
            self.pending += text


@contextmanager
def _ctrl_c_held():
    """Hold Ctrl-C while a piece is recorded and printed, so the partial reply that is kept is
    exactly what was shown (an interrupt inside a write can cut a character in half)."""
    import signal
    import threading

    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # a pending Ctrl-C is delivered here


class ChatSession:
    def __init__(
        self,
        lm: LoadedModel | RemoteModel,
        params: SamplingParams,
        conversation: Conversation | None = None,
        history: HistoryFile | None = None,
        notice: Callable[[str], None] | None = None,
        speculation: Speculation | None = None,
    ):
        from gptcli.kvcache import PromptCache
        from gptcli.remote import default_params

        self.lm = lm
        self.params = params
        self.defaults = default_params(lm.name)  # what `/set NAME` alone puts back
        self.conv = conversation or Conversation()
        self.history = history
        self.notice = notice or (lambda text: None)
        self.format = ChatFormat(lm)
        self.cache = PromptCache()
        self.speculation = speculation  # decode replies speculatively (gptcli.speculative)
        self.window_start = 0  # index of the first message the model still sees (older ones were dropped)
        self._counts: dict[int, tuple[Message, int]] = {}  # id(message) -> (message, its token count)

    # ------------------------------------------------------------------ conversation edits

    def set_system(self, text: str | None) -> None:
        self.conv.system = text or None
        self._sync()

    def reset(self) -> None:
        self.conv.messages.clear()
        self.window_start = 0
        self._sync()

    def replace(self, conv: Conversation) -> None:
        self.conv = conv
        self.window_start = 0
        self._sync()

    def undo(self) -> bool:
        """Drop the last exchange (the last user message and what followed it)."""
        msgs = self.conv.messages
        users = [i for i, m in enumerate(msgs) if m.role == "user"]
        if not users:
            return False
        del msgs[users[-1] :]
        self.window_start = min(self.window_start, len(msgs))
        self._sync()
        return True

    def set_option(self, name: str, value: str | None) -> str:
        """Change one sampling option; no value (or "-") puts back its default. Returns its name."""
        name = name.replace("-", "_").lower()
        if name in NOT_SETTABLE:
            raise UsageError(f"{name} cannot be changed in chat: it always gives one reply.")
        if name not in SETTABLE:
            raise UsageError(f"unknown sampling option '{name}'.", hint=f"Known: {', '.join(SETTABLE)}.")
        if value is None or value.strip() in ("", "-"):
            # updated() skips None values, so the default is put back with dataclasses.replace.
            from dataclasses import replace

            self.params = replace(self.params, **{name: getattr(self.defaults, name)}).validate()
        else:
            self.params = self.params.updated(**{name: coerce(name, value.strip())})
        return name

    def _sync(self) -> None:
        if self.history is not None:
            with _ctrl_c_held():  # a history write is never cut in half by Ctrl-C
                self.history.sync(self.conv)

    # ------------------------------------------------------------------ prompts

    def prompt_ids(self) -> list[int]:
        """Token ids of the conversation's newest part that fits the context with room for a reply.

        Whole exchanges are dropped from the front, never the system prompt or the newest message,
        until half the context is free. Once dropped they stay dropped, so later turns share
        a prefix and the cache stays useful.
        """
        msgs, system = self.conv.messages, self.conv.system
        context = self.format.local.context_length
        budget = context - min(self.params.max_new_tokens, context // 2)
        starts = [i for i, m in enumerate(msgs) if m.role == "user"]
        start = self.window_start if self.window_start < len(msgs) else (starts[-1] if starts else 0)
        ids = self.format.ids(system, msgs[start:])
        if len(ids) > budget:
            later = [i for i in starts if i > start]
            if later:
                # Once exchanges must go, free half the context (as llama.cpp's context shift does):
                # dropping one at a time would change the prompt's start, and so miss the cache, on
                # every turn from then on.
                start, ids = self._drop_until(system, msgs, start, len(ids), later, budget - context // 2)
            if len(ids) > budget:
                raise InputError(
                    f"the message is too long: with the system prompt it is {len(ids)} tokens, and the model's "
                    f"context of {context} tokens must keep {context - budget} for the reply.",
                    hint="Shorten it, or lower --max-new-tokens.",
                )
        if start > self.window_start:
            dropped = sum(1 for m in msgs[:start] if m.role == "user")
            which = "oldest exchange" if dropped == 1 else f"oldest {dropped} exchanges"
            self.notice(
                f"Note: the conversation is longer than the model's context ({context} tokens): the model no "
                f"longer sees the {which} (the system prompt is kept)."
            )
        self.window_start = start
        return ids

    def _drop_until(
        self, system: str | None, msgs: list[Message], first: int, total: int, later: list[int], target: int
    ) -> tuple[int, list[int]]:
        """The earliest exchange start in `later` whose prompt has at most `target` tokens (else the
        last one), with that prompt's ids. `total` is the prompt's length from `first`.

        Tokenizing the whole remaining conversation once per dropped exchange is quadratic (minutes
        for a few thousand exchanges). Instead each message is tokenized once, and the lengths,
        scaled to the exact `total` (the format adds tokens around each message), estimate where
        the prompt fits; exact prompts, each about `target` tokens long, then settle it.
        """
        counts = self._message_tokens(msgs[first:])
        scale = total / max(1, sum(counts))
        estimate, dropped, k = [], 0, first
        for s in later:  # the estimated length of the prompt from each later start
            while k < s:
                dropped += counts[k - first]
                k += 1
            estimate.append(total - scale * dropped)
        exact: dict[int, list[int]] = {}

        def ids_from(j: int) -> list[int]:
            if j not in exact:
                exact[j] = self.format.ids(system, msgs[later[j] :])
            return exact[j]

        j = next((j for j, e in enumerate(estimate) if e <= target), len(later) - 1)
        while j < len(later) - 1 and len(ids_from(j)) > target:
            j += 1
        while j > 0 and len(ids_from(j)) <= target and len(ids_from(j - 1)) <= target:
            j -= 1
        return later[j], ids_from(j)

    def _message_tokens(self, messages: list[Message]) -> list[int]:
        """Each message's token count (its content alone, plus one), counted once per message."""
        missing = [m for m in messages if id(m) not in self._counts]
        if missing:
            encoded = self.format.local.tokenizer([m.content for m in missing], add_special_tokens=False)["input_ids"]
            for m, ids in zip(missing, encoded):
                self._counts[id(m)] = (m, len(ids) + 1)
        # Keep only the messages asked about: dropped ones never come back (and their ids may be reused).
        self._counts = {id(m): self._counts[id(m)] for m in messages}
        return [self._counts[id(m)][1] for m in messages]

    # ------------------------------------------------------------------ turns

    def send(self, text: str, on_text: Callable[[str], None] | None = None) -> Turn:
        """Add a user message and generate the reply. Ctrl-C keeps the partial reply, marked interrupted."""
        from gptcli.generation import Completion, Request, RunStats, stream_generate
        from gptcli.remote import RemoteModel

        self.conv.messages.append(Message("user", text))
        stop = tuple(dict.fromkeys(tuple(self.params.stop) + self.format.stop))
        params = self.params.updated(stop=stop)
        if isinstance(self.lm, RemoteModel):
            # The server applies its model's chat template and checks the length itself.
            request = Request(messages=self.format.records(self.conv.system, self.conv.messages), params=params)
        else:
            try:
                ids = self.prompt_ids()
            except BaseException:
                self.conv.messages.pop()  # nothing was generated: the conversation stays as it was
                raise
            if self.lm.is_encoder_decoder:
                request = Request(
                    prompt=self.format.text(self.conv.system, self.conv.messages[self.window_start :]), params=params
                )
            else:
                request = Request(prompt_ids=ids, params=params)
        stats, parts, done = RunStats(), [], None
        try:
            for event in stream_generate(
                self.lm, [request], stats=stats, prompt_cache=self.cache, speculation=self.speculation
            ):
                if isinstance(event, Completion):
                    done = event
                elif event.text:
                    with _ctrl_c_held():
                        parts.append(event.text)
                        if on_text:
                            on_text(event.text)
        except GptcliError:
            if not parts:  # a server's refusal (too long, no such model): the message was not taken
                self.conv.messages.pop()
            raise
        except KeyboardInterrupt as exc:
            reply = Message("assistant", "".join(parts).strip(), interrupted=True)
            self._add(reply)
            return Turn(reply, None, stats, terminated=isinstance(exc, Terminated))
        reply = Message("assistant", done.text.strip() if done else "".join(parts).strip())
        self._add(reply)
        return Turn(reply, done, stats)

    def add(self, message: Message) -> None:
        """Add a message without generating (an assistant turn from a script, a few-shot example)."""
        self._add(message)

    def _add(self, message: Message) -> None:
        self.conv.messages.append(message)
        self._sync()
