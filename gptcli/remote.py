"""Models behind an OpenAI-compatible server: `--model openai:NAME` in generate, chat, translate and eval.

`open_remote` checks what the user typed (nothing is sent yet); `stream_remote` turns the
core's `Request`s into streamed `/v1/completions` calls (a prompt) or `/v1/chat/completions`
calls (chat messages) and yields the same `Piece` and `Completion` events as the local core,
so commands and the output layer do not care where text comes from. `score_remote` asks
`/v1/completions` for the log-probabilities of a text's own tokens (`echo`, `max_tokens=0`).

Rules that keep remote runs like local ones:

- Each sample is one request (`n=1`), seeded `seed + sample` as locally, so every sample has
  its own token counts and a seed reproduces a sample whether it is asked alone or with others.
  Up to `concurrency` requests are in flight at once (`--batch-size`): a batching server
  (vLLM, gptcli serve) runs them together.
- Token counts come from the server's `usage` (asked for with `include_usage`); a server that
  sends none leaves them unknown (`usage_known=False`), never estimated.
- Only 429 and 503 are retried, a bounded number of times with backoff; everything else fails
  at once with one message. The client's own retries are off.
- The API key comes from OPENAI_API_KEY and lives only in the client: it is not part of the
  model's repr, of any message, record or file.

The `openai` package is imported inside functions: the CLI's start-up never pays for it.
"""

from __future__ import annotations

import os
import queue
import random
import re
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from gptcli.errors import GptcliError, InputError, UsageError
from gptcli.sampling import SamplingParams

PREFIX = "openai:"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_TIMEOUT_S = 60.0
NO_KEY = "no-key"  # sent without OPENAI_API_KEY: servers that need no key ignore it (their examples pass a dummy too)
RETRY_STATUSES = (429, 503)
MAX_RETRIES = 3  # after the first try: at most 4 requests for one sequence
RETRY_BASE_S = 1.0  # backoff 1, 2, 4 s (with jitter) when the server sends no Retry-After
RETRY_CAP_S = 30.0  # a longer Retry-After is not waited for: the error comes at once


def is_remote(spec: str | None) -> bool:
    return bool(spec) and str(spec).startswith(PREFIX)


def default_params(spec: str | None, base: SamplingParams | None = None) -> SamplingParams:
    """The sampling defaults for a model: a remote one gets no top_k unless asked (the OpenAI API
    has no such parameter, and others default it themselves)."""
    base = base or SamplingParams()
    return replace(base, top_k=None) if is_remote(spec) else base


@dataclass
class RemoteModel:
    """A model served over the OpenAI API. `name` is what the user typed (`openai:NAME`)."""

    name: str
    model: str  # NAME: the server's name for it
    base_url: str
    timeout: float
    api_key: str = field(default="", repr=False)
    # What the core asks of any model: the server decides context and format.
    is_encoder_decoder: bool = False
    _client: Any = field(default=None, repr=False)

    @property
    def where(self) -> str:
        """The base URL for messages, without any user:password in it."""
        return redact_url(self.base_url)

    def client(self) -> Any:
        if self._client is None:
            import openai

            # The client's own retries (connection errors, 408, 409, 429, 5xx) are off: we retry 429/503
            # only (`with_retries`). The client insists on some key; servers that need none ignore it.
            self._client = openai.OpenAI(
                api_key=self.api_key or NO_KEY, base_url=self.base_url, timeout=self.timeout, max_retries=0
            )
        return self._client


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


def open_remote(spec: str, *, api_base: str | None = None, timeout: float | None = None) -> RemoteModel:
    """Check `openai:NAME`, the base URL and the timeout; nothing is sent to the server yet."""
    name = spec[len(PREFIX) :].strip()
    if not name:
        raise UsageError(f"--model {spec} names no model.", hint="Write openai:NAME with the server's model name.")
    base = (api_base or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).strip().rstrip("/")
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(
            f"--api-base '{redact_url(base)}' is not an http(s) URL.",
            hint="For example --api-base http://127.0.0.1:8000/v1",
        )
    if timeout is None:
        timeout = DEFAULT_TIMEOUT_S
    if not timeout > 0:
        raise UsageError(f"--timeout must be more than 0 seconds (got {timeout:g}).")
    return RemoteModel(spec, name, base, float(timeout), api_key=os.environ.get("OPENAI_API_KEY", "").strip())


def check_remote_options(params: SamplingParams) -> None:
    if params.num_beams > 1:
        raise UsageError("--num-beams needs a local model: the OpenAI API has no beam search.")


# --------------------------------------------------------------------------- errors


def api_error(rm: RemoteModel, exc: BaseException, endpoint: str = "") -> GptcliError:
    """One message for anything the client raised: what happened, and what to do about it."""
    import openai

    where = rm.where
    names = {cls.__name__ for cls in type(exc).__mro__}
    if isinstance(exc, openai.APITimeoutError) or "TimeoutException" in names:
        return GptcliError(
            f"the server at {where} did not answer within {rm.timeout:g} s.",
            hint="Raise --timeout (or GPTCLI_TIMEOUT), or check that the server is not overloaded.",
        )
    if isinstance(exc, openai.APIConnectionError):
        return GptcliError(
            f"cannot reach the server at {where}: {_reason(exc, rm)}.",
            hint="Check --api-base (or OPENAI_BASE_URL) and that the server is running.",
        )
    if isinstance(exc, openai.APIStatusError):
        status, detail = exc.status_code, _server_message(exc, rm)
        said = f": {detail}" if detail else ""
        if status == 401:
            # The body is not repeated: some servers quote part of the key back.
            return GptcliError(
                f"the server at {where} refused the request (HTTP 401): it needs a valid API key.",
                hint="Set OPENAI_API_KEY to a key it accepts.",
            )
        if status == 403:
            return GptcliError(
                f"the server at {where} does not allow this request (HTTP 403).",
                hint=f"Check that your API key may use model '{rm.model}'.",
            )
        if status == 404:
            return GptcliError(
                f"the server at {where} has no model '{rm.model}' or no {endpoint or 'such'} endpoint (HTTP 404{said}).",
                hint=f"GET {where}/models lists its models; --api-base must end where /models is (usually /v1).",
            )
        if status in RETRY_STATUSES:
            what = "is rate-limiting requests" if status == 429 else "is overloaded"
            return GptcliError(
                f"the server at {where} {what} (HTTP {status}{said}), still after {MAX_RETRIES} retries.",
                hint="Try again later, or send fewer requests at once with --batch-size.",
            )
        if status >= 500:
            return GptcliError(f"the server at {where} failed (HTTP {status}{said}).")
        return InputError(f"the server at {where} rejected the request (HTTP {status}{said}).")
    if "HTTPError" in names or "TransportError" in names or isinstance(exc, openai.APIError):
        return GptcliError(
            f"the connection to the server at {where} broke off mid-reply: {_reason(exc, rm)}.",
            hint="Check the server's log; run again.",
        )
    raise exc  # not a client error: a bug, with its traceback


def _clean(text: str, rm: RemoteModel) -> str:
    text = " ".join(str(text).split())
    if rm.api_key:
        text = text.replace(rm.api_key, "***")
    return text if len(text) <= 300 else text[:297] + "..."


def _reason(exc: BaseException, rm: RemoteModel) -> str:
    """The innermost cause, e.g. "Connection refused", without the client's generic wrapping."""
    seen: set[int] = set()
    current: BaseException | None = exc
    last = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        last = current
        current = current.__cause__ or current.__context__
    text = str(last).strip()
    # "[Errno 111] Connection refused" reads better without the number.
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text)
    return _clean(text, rm) or type(last).__name__


def _server_message(exc: Any, rm: RemoteModel) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else inner
        if message:
            return _clean(message, rm)
    return _clean(body, rm) if isinstance(body, str) else ""


def _retry_after(exc: Any) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: use our own backoff


def with_retries(rm: RemoteModel, call: Callable[[], Any], cancel: threading.Event | None = None) -> Any:
    """`call()`, retried on 429 and 503 only, at most MAX_RETRIES times, waiting as the server asks
    (Retry-After, up to RETRY_CAP_S) or 1, 2, 4 s with jitter."""
    import openai

    for attempt in range(MAX_RETRIES + 1):
        try:
            return call()
        except openai.APIStatusError as exc:
            if exc.status_code not in RETRY_STATUSES or attempt == MAX_RETRIES:
                raise
            delay = _retry_after(exc)
            if delay is None:
                delay = RETRY_BASE_S * 2**attempt * random.uniform(0.75, 1.25)
            elif delay > RETRY_CAP_S:
                raise
            if cancel is not None:
                if cancel.wait(delay):
                    raise
            else:
                time.sleep(delay)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- generation


def request_kwargs(rm: RemoteModel, params: SamplingParams, seed: int | None) -> dict[str, Any]:
    """The sampling part of a completions or chat request. top_k, min_p and repetition_penalty are
    not OpenAI parameters: they go in the body as extras, which vLLM, llama.cpp and gptcli serve read
    (and the OpenAI API rejects)."""
    kwargs: dict[str, Any] = {
        "model": rm.model,
        "max_tokens": params.max_new_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    extra: dict[str, Any] = {}
    if params.is_greedy:
        kwargs["temperature"] = 0.0
    else:
        kwargs["temperature"] = params.temperature
        if params.top_p is not None and params.top_p < 1:
            kwargs["top_p"] = params.top_p
        if params.top_k:
            extra["top_k"] = params.top_k
        if params.min_p:
            extra["min_p"] = params.min_p
    if params.repetition_penalty is not None and params.repetition_penalty != 1.0:
        extra["repetition_penalty"] = params.repetition_penalty
    if params.stop:
        kwargs["stop"] = list(params.stop)
    if seed is not None:
        kwargs["seed"] = seed
    if extra:
        kwargs["extra_body"] = extra
    return kwargs


def finish_reason(reason: str | None, stop_reason: Any, stops: tuple[str, ...]) -> str:
    """Our names: "eos" (the model ended its text), "stop" (a stop string), "length".

    The API says "stop" for both of the first two. vLLM and gptcli serve tell them apart in
    `stop_reason` (the stop string, or the end token's id); other servers do not, and then a
    run with stop strings reports "stop", one without them "eos".
    """
    if reason == "stop":
        if isinstance(stop_reason, str):
            return "stop"
        if isinstance(stop_reason, int) or not stops:
            return "eos"
        return "stop"
    return reason or "length"


@dataclass
class _Job:
    request: int
    sample: int
    params: SamplingParams
    seed: int | None
    prompt: str | None
    messages: list[dict[str, str]] | None


def _jobs(requests: list[Any]) -> Iterator[_Job]:
    from gptcli.sampling import resolve_seed, sequence_seed

    for r, req in enumerate(requests):
        params = req.params.validate()
        check_remote_options(params)
        seed = resolve_seed(params)
        for s in range(params.num_return_sequences):
            yield _Job(r, s, params, sequence_seed(seed, s), req.prompt, req.messages)


def stream_remote(
    rm: RemoteModel, requests: list[Any], *, concurrency: int = 8, stats: Any = None
) -> Generator[Any, None, None]:
    """Like `generation.stream_generate`: Pieces as text arrives and one Completion per sequence,
    with up to `concurrency` requests in flight. A request's `messages` go to the chat endpoint,
    its `prompt` to the completions endpoint. If the run stops early (Ctrl-C, `close()`), the
    sequences in flight are put in `stats.unfinished`; a server or connection error stops every
    request and is raised as one GptcliError."""
    from gptcli.generation import Completion, RunStats

    stats = stats if stats is not None else RunStats()
    started = time.perf_counter()
    jobs = _jobs(requests)
    pending = list(jobs)  # validated up front: a bad setting fails before any request is sent
    events: queue.Queue = queue.Queue()
    cancel = threading.Event()
    lock = threading.Lock()
    streams: set[Any] = set()  # open responses, closed on cancel so the server stops generating
    todo = iter(pending)

    def next_job() -> _Job | None:
        with lock:
            return next(todo, None)

    def worker() -> None:
        try:
            while not cancel.is_set() and (job := next_job()) is not None:
                _run_job(rm, job, events, cancel, streams, lock)
        except BaseException as exc:  # handed to the consumer, which raises it
            events.put(("error", exc))
        finally:
            events.put(("exit", None))

    threads = [
        threading.Thread(target=worker, name=f"gptcli-remote-{i}", daemon=True)
        for i in range(max(1, min(concurrency, len(pending))))
    ]
    running = len(threads) if pending else 0
    live: dict[tuple[int, int], _Live] = {}  # sequences started and not finished, as the consumer saw them
    for t in threads if pending else []:
        t.start()
    try:
        while running:
            try:
                kind, item = events.get(timeout=0.25)
            except queue.Empty:
                continue
            if kind == "exit":
                running -= 1
            elif kind == "error":
                raise item
            elif kind == "start":
                live[(item.request, item.sample)] = item
            elif kind == "piece":
                live[(item.request, item.sample)].parts.append(item.text)
                if stats.ttft_s is None:
                    stats.ttft_s = time.perf_counter() - started
                yield item
            else:
                done: Completion = item
                live.pop((done.request, done.sample), None)
                _count(stats, done)
                yield done
    except (KeyboardInterrupt, GeneratorExit):
        _stop(cancel, streams, lock)
        now = time.perf_counter()
        for state in live.values():
            done = state.completion("".join(state.parts), "interrupted", None, now)
            _count(stats, done)
            stats.unfinished.append(done)
        raise
    except BaseException as exc:
        _stop(cancel, streams, lock)
        if isinstance(exc, GptcliError):
            raise
        raise api_error(rm, exc, "chat" if any(r.messages for r in requests) else "completions") from exc
    finally:
        stats.elapsed_s = time.perf_counter() - started


def _stop(cancel: threading.Event, streams: set[Any], lock: threading.Lock) -> None:
    cancel.set()
    with lock:
        open_now = list(streams)
    for stream in open_now:
        try:
            stream.close()
        except Exception:
            pass  # closing a response a worker is reading may fail; the connection is gone either way


def _count(stats: Any, done: Any) -> None:
    if not done.usage_known:
        stats.usage_known = False
    stats.prompt_tokens += done.prompt_tokens if done.sample == 0 else 0
    stats.completion_tokens += done.completion_tokens
    stats.decode_s += done.decode_s


@dataclass
class _Live:
    request: int
    sample: int
    seed: int | None
    started: float
    first_at: float | None = None
    last_at: float | None = None
    parts: list[str] = field(default_factory=list)

    def completion(self, text: str, reason: str, usage: Any, now: float) -> Any:
        from gptcli.generation import Completion

        first = self.first_at or now
        known = usage is not None and getattr(usage, "completion_tokens", None) is not None
        return Completion(
            request=self.request,
            sample=self.sample,
            text=text,
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0) if known else 0,
            completion_tokens=int(usage.completion_tokens) if known else 0,
            finish_reason=reason,
            seed=self.seed,
            ttft_s=first - self.started,
            decode_s=(self.last_at or first) - first,
            elapsed_s=now - self.started,
            usage_known=known,
        )


def _run_job(
    rm: RemoteModel,
    job: _Job,
    events: queue.Queue,
    cancel: threading.Event,
    streams: set[Any],
    lock: threading.Lock,
) -> None:
    from gptcli.generation import Piece

    client = rm.client()
    kwargs = request_kwargs(rm, job.params, job.seed)
    chat = job.messages is not None
    state = _Live(job.request, job.sample, job.seed, time.perf_counter())
    if chat:
        stream = with_retries(rm, lambda: client.chat.completions.create(messages=job.messages, **kwargs), cancel)
    else:
        stream = with_retries(rm, lambda: client.completions.create(prompt=job.prompt or "", **kwargs), cancel)
    with lock:
        streams.add(stream)
    events.put(("start", state))
    parts: list[str] = []
    reason: str | None = None
    stop_reason: Any = None
    usage = None
    try:
        for chunk in stream:
            if cancel.is_set():
                return
            if getattr(chunk, "usage", None) is not None:
                usage = chunk.usage
            for choice in chunk.choices or []:
                text = (choice.delta.content if chat else choice.text) or ""
                if text:
                    now = time.perf_counter()
                    state.first_at = state.first_at or now
                    state.last_at = now
                    parts.append(text)
                    events.put(("piece", Piece(job.request, job.sample, text)))
                if choice.finish_reason:
                    reason = choice.finish_reason
                    stop_reason = (getattr(choice, "model_extra", None) or {}).get("stop_reason")
    except Exception:
        if cancel.is_set():
            return  # closed by the consumer
        raise
    finally:
        with lock:
            streams.discard(stream)
        stream.close()
    if cancel.is_set():
        return
    if reason is None:
        raise GptcliError(
            f"the server at {rm.where} ended its reply without saying why (no finish_reason).",
            hint="Check the server's log; run again.",
        )
    done = state.completion(
        "".join(parts), finish_reason(reason, stop_reason, job.params.stop), usage, time.perf_counter()
    )
    events.put(("done", done))


# --------------------------------------------------------------------------- scoring (eval)


@dataclass
class TokenScores:
    """The server's tokens of one text and each one's log-probability (None: not predicted, the first)."""

    tokens: list[str]
    logprobs: list[float | None]
    offsets: list[int]  # character offset of each token in the text


def score_remote(rm: RemoteModel, texts: Iterable[str], *, concurrency: int = 8) -> Generator[TokenScores, None, None]:
    """The server's log-probabilities of each text's own tokens, in order: `/v1/completions` with
    `echo=True, logprobs=1, max_tokens=0`, up to `concurrency` texts in flight. Texts are read only
    as they are sent, so a consumer that stops early (--max-tokens) sends no more. A server that does
    not return prompt log-probabilities (chat-only models, ollama) is one clear error."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    client = rm.client()

    def one(text: str) -> TokenScores:
        try:
            reply = with_retries(
                rm,
                lambda: client.completions.create(
                    model=rm.model, prompt=text, echo=True, logprobs=1, max_tokens=0, temperature=0.0
                ),
            )
        except Exception as exc:
            raise api_error(rm, exc, "completions") from exc
        return _prompt_scores(rm, reply)

    pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="gptcli-score")
    pending: deque = deque()
    try:
        for text in texts:
            pending.append(pool.submit(one, text))
            if len(pending) >= max(1, concurrency):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _prompt_scores(rm: RemoteModel, reply: Any) -> TokenScores:
    choice = reply.choices[0] if getattr(reply, "choices", None) else None
    lp = getattr(choice, "logprobs", None) if choice is not None else None
    tokens = list(getattr(lp, "tokens", None) or [])
    values = list(getattr(lp, "token_logprobs", None) or [])
    offsets = list(getattr(lp, "text_offset", None) or [])
    if not tokens or len(values) != len(tokens) or all(v is None for v in values[1:]):
        raise GptcliError(
            f"the server at {rm.where} does not return the log-probabilities of a prompt's tokens for "
            f"'{rm.model}' (completions with echo and logprobs), so it cannot be evaluated remotely.",
            hint="vLLM and gptcli serve return them; chat-only APIs and ollama do not. Evaluate a local copy instead.",
        )
    return TokenScores(tokens, [None if v is None else float(v) for v in values], offsets or [0] * len(tokens))
