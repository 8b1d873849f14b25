"""`gptcli serve`: an OpenAI-compatible HTTP API on the shared generation core.

Two halves:

- `Engine`, a thread that owns the model and drives one `DecodeBatch` (continuous batching):
  at every step boundary, requests waiting for a slot are prefilled and join the running
  batch, cancelled ones leave, and each row's new text is handed to the request's asyncio
  queue. Models the decode loop cannot drive (encoder-decoder, `model.generate` fallback)
  are served one request at a time through `stream_generate`.
- A Starlette app (`create_app`) with the endpoints of the OpenAI API that clients use:
  `/v1/models`, `/v1/completions`, `/v1/chat/completions` (both streaming as server-sent
  events), and `/health`. Every error a client can cause is an OpenAI error body
  `{"error": {"message", "type", "param", "code"}}` with its HTTP status; none stops the
  server or prints a traceback.

starlette and uvicorn are imported inside functions: the CLI imports this module lazily too.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from gptcli.errors import GptcliError
from gptcli.sampling import SamplingParams, resolve_seed, sequence_seed

if TYPE_CHECKING:
    from gptcli.generation import Completion, Piece, _Seq
    from gptcli.loading import LoadedModel

# Most sequences one request may ask for (prompts × n): one request must not fill every slot for hours.
MAX_CHOICES = 64
MAX_LOGPROBS = 20  # alternatives per token (`logprobs` of the completions API)
_END = object()  # queued after a job's last event


class ApiError(Exception):
    """An error answered with an OpenAI error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class ServeConfig:
    model_id: str  # the name /v1/models lists and requests must use
    aliases: tuple[str, ...] = ()  # other names accepted for it (what --model was given as)
    defaults: SamplingParams = field(default_factory=SamplingParams)
    api_key: str | None = None
    max_concurrency: int = 8  # requests generating at once; more wait in the queue
    max_queue: int = 64  # requests waiting for a slot; beyond it: 503
    max_body_bytes: int = 1 << 20
    shutdown_timeout: float = 10.0  # in-flight requests get this long to finish on SIGTERM/Ctrl-C


# --------------------------------------------------------------------------- the engine


@dataclass
class Job:
    """One HTTP request's sequences: `choices` maps (request, sample) of its events to a choice index."""

    seqs: list[_Seq]
    choices: dict[tuple[int, int], int]
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    prompt_logprobs: int | None = None  # echo + logprobs: score the prompts first, with this many alternatives
    prompts: list[tuple[int, list[int]]] = field(default_factory=list)  # (request, prompt ids) per prompt
    remaining: int = 0
    cancelled: bool = False
    id: int = 0
    uid: str = ""  # the response id's suffix

    def emit(self, event: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the event loop is closed: the server is gone, nobody is listening
            pass


class Engine:
    """The thread that owns the model; see the module docstring."""

    def __init__(self, lm: LoadedModel, max_concurrency: int = 8, max_queue: int = 64):
        from gptcli.generation import DecodeBatch, supports_fast_decode

        self.lm = lm
        self.fast = supports_fast_decode(lm)
        self.batch = DecodeBatch(lm) if self.fast else None
        self.max_concurrency, self.max_queue = max(1, max_concurrency), max(0, max_queue)
        self.cond = threading.Condition()
        self.waiting: deque[Job] = deque()
        self.active: dict[int, Job] = {}
        self.cancelled: list[Job] = []
        self.owner: dict[int, Job] = {}  # seq.request (unique per sequence group) -> its job
        self.stopping = False
        self.ids = itertools.count(1)
        self.thread = threading.Thread(target=self._run, name="gptcli-engine", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()
        self.thread.join(timeout)

    def load(self) -> dict[str, int]:
        with self.cond:
            return {"running": len(self.active), "waiting": len(self.waiting)}

    def new_id(self) -> int:
        return next(self.ids)

    def submit(self, job: Job) -> None:
        with self.cond:
            if self.stopping:
                raise ApiError(503, "The server is shutting down.", type="server_error", code="shutting_down")
            busy = len(self.active) + len(self.waiting)
            if busy >= self.max_concurrency + self.max_queue:
                raise ApiError(
                    503,
                    f"The server is busy: {len(self.active)} requests running and {len(self.waiting)} waiting. "
                    "Retry later.",
                    type="server_error",
                    code="server_busy",
                    headers={"Retry-After": "1"},
                )
            job.remaining = len(job.seqs)
            self.waiting.append(job)
            self.cond.notify()

    def cancel(self, job: Job) -> None:
        """The client went away: stop generating for it (its rows leave at the next step boundary)."""
        with self.cond:
            if job.cancelled or job.remaining == 0:
                return
            job.cancelled = True
            self.cancelled.append(job)
            self.cond.notify()

    # ------------------------------------------------------------------ the thread

    def _idle(self) -> bool:
        return not self.waiting and not self.cancelled and not (self.batch is not None and len(self.batch))

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.stopping and self._idle():
                    self.cond.wait()
                if self.stopping:
                    break
                dropped, self.cancelled = self.cancelled, []
                for job in dropped:
                    if job in self.waiting:
                        self.waiting.remove(job)
                admit: list[Job] = []
                joinable = self.batch is None or self.batch.can_join()
                limit = self.max_concurrency if self.fast else 1
                while joinable and self.waiting and len(self.active) < limit:
                    job = self.waiting.popleft()
                    admit.append(job)
                    self.active[job.id] = job
            try:
                for job in dropped:
                    self._finish(job, cancel=True)
                if self.fast:
                    self._admit(admit)
                    if self.batch is not None and len(self.batch):
                        self._dispatch(self.batch.step())
                else:
                    for job in admit:
                        self._run_alone(job)
            except Exception as exc:  # a failed forward (out of memory...): fail what was running, keep serving
                self._fail_all(exc)

    def _admit(self, jobs: list[Job]) -> None:
        assert self.batch is not None
        seqs = []
        for job in jobs:
            try:
                if job.prompt_logprobs is not None:
                    self._score_prompts(job)
            except Exception as exc:
                self._fail(job, exc)
                continue
            for seq in job.seqs:
                self.owner[seq.request] = job
            seqs += job.seqs
            if not job.seqs:
                self._finish(job)
        if seqs:
            self._dispatch(self.batch.add(seqs))

    def _score_prompts(self, job: Job) -> None:
        """echo + logprobs: each prompt's token log-probabilities, sent ahead of the generated text."""
        for request, ids in job.prompts:
            job.emit(("prompt_logprobs", request, prompt_logprobs(self.lm, ids, int(job.prompt_logprobs or 0))))

    def _dispatch(self, events: list[Piece | Completion]) -> None:
        from gptcli.generation import Completion

        for event in events:
            job = self.owner.get(event.request)
            if job is None or job.cancelled:
                continue
            job.emit(event)
            if isinstance(event, Completion):
                job.remaining -= 1
                if job.remaining == 0:
                    self._finish(job)

    def _finish(self, job: Job, cancel: bool = False) -> None:
        if cancel and self.batch is not None:
            self.batch.cancel(job.seqs)
        for seq in job.seqs:
            self.owner.pop(seq.request, None)
        with self.cond:
            self.active.pop(job.id, None)
        job.emit(_END)

    def _fail(self, job: Job, exc: Exception) -> None:
        job.emit(_server_error(exc))
        self._finish(job, cancel=True)

    def _fail_all(self, exc: Exception) -> None:
        for job in list(self.active.values()):
            self._fail(job, exc)
        if self.batch is not None:
            from gptcli.generation import DecodeBatch

            self.batch = DecodeBatch(self.lm)  # whatever state the failed step left is dropped

    def _run_alone(self, job: Job) -> None:
        """One request at a time through `stream_generate`: models the decode loop cannot drive."""
        from gptcli.generation import Completion, Piece, Request, stream_generate

        if job.prompt_logprobs is not None and not self.lm.is_encoder_decoder:
            self._score_prompts(job)
        groups: dict[int, _Seq] = {}
        for seq in job.seqs:
            groups.setdefault(seq.request, seq)
        order = list(groups)
        requests = [
            Request(
                prompt=groups[r].encoder_text,
                prompt_ids=None if self.lm.is_encoder_decoder else groups[r].prompt_ids,
                params=groups[r].params,
            )
            for r in order
        ]
        events = stream_generate(self.lm, requests)
        sent: dict[tuple[int, int], str] = {}
        try:
            for event in events:
                if job.cancelled:
                    break
                event.request = order[event.request]  # back to the job's numbering
                key = (event.request, event.sample)
                if isinstance(event, Completion):
                    # model.generate's path may stream less than the whole text: send the rest first.
                    done = sent.get(key, "")
                    if event.text.startswith(done) and len(event.text) > len(done):
                        job.emit(Piece(event.request, event.sample, event.text[len(done) :]))
                else:
                    sent[key] = sent.get(key, "") + event.text
                job.emit(event)
        finally:
            events.close()
        self._finish(job)


def _server_error(exc: Exception) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, GptcliError):
        return ApiError(400, str(exc))
    return ApiError(500, f"generation failed: {type(exc).__name__}: {exc}", type="server_error")


def prompt_logprobs(lm: LoadedModel, ids: list[int], top: int) -> list[tuple[float | None, list[tuple[int, float]]]]:
    """Per prompt token: (its log-probability given the tokens before it, the `top` likeliest
    alternatives there). The first token has no context: None, as the OpenAI API reports it."""
    import torch

    out: list[tuple[float | None, list[tuple[int, float]]]] = [(None, [])]
    if len(ids) < 2:
        return out
    with torch.inference_mode():
        tokens = torch.tensor([ids], dtype=torch.long, device=lm.device)
        logits = lm.model(input_ids=tokens, attention_mask=torch.ones_like(tokens)).logits[0, :-1]
        # In slices: float32 log-softmax over a whole long prompt's vocabulary rows is large.
        for start in range(0, logits.shape[0], 256):
            part = logits[start : start + 256].float().log_softmax(-1)
            targets = tokens[0, start + 1 : start + 1 + part.shape[0]]
            chosen = part.gather(1, targets[:, None]).squeeze(1).tolist()
            alternatives: list[list[tuple[int, float]]] = [[] for _ in chosen]
            if top:
                values, index = part.topk(min(top, part.shape[-1]), dim=-1)
                alternatives = [list(zip(i, v)) for i, v in zip(index.tolist(), values.tolist())]
            out += list(zip(chosen, alternatives))
    return out


# --------------------------------------------------------------------------- request parsing


def _field(body: dict[str, Any], name: str, kinds: tuple[type, ...], default: Any = None) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    # bool is an int to Python; a number field must not take true/false.
    if isinstance(value, bool) and bool not in kinds:
        value = object()
    if not isinstance(value, kinds):
        names = {
            str: "a string",
            int: "an integer",
            float: "a number",
            bool: "a boolean",
            list: "a list",
            dict: "an object",
        }
        want = " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in kinds))
        raise ApiError(400, f"'{name}' must be {want}.", param=name, code="invalid_type")
    return value


def _stops(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    values = [stop] if isinstance(stop, str) else stop
    if not isinstance(values, list) or not all(isinstance(s, str) for s in values):
        raise ApiError(400, "'stop' must be a string or a list of strings.", param="stop", code="invalid_type")
    return tuple(s for s in values if s)


def sampling_from(body: dict[str, Any], defaults: SamplingParams, *, stop: tuple[str, ...] = ()) -> SamplingParams:
    """The request's sampling settings over the server's defaults (the OpenAI names, plus
    top_k, min_p and repetition_penalty as vLLM accepts them)."""
    n = _field(body, "n", (int,), 1)
    if not 1 <= n <= MAX_CHOICES:
        raise ApiError(400, f"'n' must be from 1 to {MAX_CHOICES} (got {n}).", param="n")
    changes = dict(
        temperature=_field(body, "temperature", (int, float)),
        top_p=_field(body, "top_p", (int, float)),
        top_k=_field(body, "top_k", (int,)),
        min_p=_field(body, "min_p", (int, float)),
        repetition_penalty=_field(body, "repetition_penalty", (int, float)),
        seed=_field(body, "seed", (int,)),
        num_return_sequences=n,
        stop=tuple(dict.fromkeys(_stops(body) + stop)) or None,
    )
    if changes["temperature"] == 0:
        changes["temperature"] = 0.0  # greedy
    try:
        return defaults.updated(
            **{k: float(v) if isinstance(v, int) and k in _FLOATS else v for k, v in changes.items()}
        )
    except GptcliError as exc:
        message = exc.message.replace("--num-return-sequences", "n").replace("--", "").replace("-", "_")
        raise ApiError(400, message) from exc


_FLOATS = ("temperature", "top_p", "min_p", "repetition_penalty")


def _max_tokens(body: dict[str, Any], defaults: SamplingParams, *, allow_zero: bool) -> int:
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    value = _field(body, name, (int,), defaults.max_new_tokens)
    if value < (0 if allow_zero else 1):
        raise ApiError(400, f"'{name}' must be at least {0 if allow_zero else 1} (got {value}).", param=name)
    return value


# --------------------------------------------------------------------------- the HTTP app


class Api:
    """The request handlers; state shared by all of them."""

    def __init__(self, lm: LoadedModel, config: ServeConfig, engine: Engine):
        self.lm, self.config, self.engine = lm, config, engine
        self.created = int(time.time())
        embeddings = lm.model.get_input_embeddings() if hasattr(lm.model, "get_input_embeddings") else None
        self.vocab = int(getattr(embeddings, "num_embeddings", 0) or len(lm.tokenizer))

    # ------------------------------------------------------------------ plumbing

    def check_key(self, request: Any) -> None:
        key = self.config.api_key
        if not key:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise ApiError(
                401,
                "Incorrect or missing API key: send it as 'Authorization: Bearer KEY'.",
                code="invalid_api_key",
            )

    async def read_json(self, request: Any) -> dict[str, Any]:
        limit = self.config.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise _too_large(limit)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks) or b"null")
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"The request body is not valid JSON: {exc}.", code="invalid_json") from exc
        if not isinstance(body, dict):
            raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
        return body

    def check_model(self, body: dict[str, Any]) -> None:
        model = body.get("model")
        if model is None:
            raise ApiError(400, "'model' is required.", param="model", code="missing_model")
        if model not in (self.config.model_id, *self.config.aliases):
            raise ApiError(
                404,
                f"The model '{model}' does not exist. This server serves '{self.config.model_id}'.",
                param="model",
                code="model_not_found",
            )

    def fit(self, ids: list[int], max_tokens: int, param: str) -> int:
        """The prompt must leave room in the context; max_tokens is capped at what is left."""
        context = self.lm.context_length
        if self.lm.is_encoder_decoder:
            return max_tokens
        if len(ids) > context or (len(ids) == context and max_tokens > 0):
            raise ApiError(
                400,
                f"This model's maximum context length is {context} tokens, but the prompt is {len(ids)} tokens.",
                param=param,
                code="context_length_exceeded",
            )
        return min(max_tokens, context - len(ids))

    def count(self, ids: list[int], encoder_text: str | None) -> int:
        """A prompt's tokens for `usage`: an encoder-decoder model reads the text through its encoder."""
        if ids or not self.lm.is_encoder_decoder:
            return len(ids)
        enc = self.lm.tokenizer(encoder_text or "", truncation=True, max_length=self.lm.context_length)
        return len(enc["input_ids"])

    def new_job(self, prompts: list[tuple[list[int], str | None]], params: SamplingParams, logprobs: int | None) -> Job:
        from gptcli.generation import TextTracker, _Seq

        seed = resolve_seed(params)
        seqs, choices, numbered = [], {}, []
        for p_index, (ids, encoder_text) in enumerate(prompts):
            request = self.engine.new_id()
            numbered.append((request, ids))
            for s in range(params.num_return_sequences):
                seq = _Seq(request, s, ids, params, sequence_seed(seed, s), TextTracker(self.lm.tokenizer, params.stop))
                seq.encoder_text = encoder_text
                seq.logprobs = logprobs
                choices[(request, s)] = p_index * params.num_return_sequences + s
                seqs.append(seq)
        return Job(
            seqs, choices, asyncio.get_running_loop(), asyncio.Queue(), prompts=numbered, id=self.engine.new_id()
        )

    async def events(self, job: Job, request: Any, *, poll: bool = True) -> AsyncIterator[Any]:
        """The job's events until its end; cancels it when the consumer stops early or the client leaves.

        `poll`: check every second whether the client is still there (a streamed response needs
        no polling: Starlette cancels it when the client disconnects)."""
        try:
            while True:
                if not poll:
                    event = await job.queue.get()
                else:
                    try:
                        event = await asyncio.wait_for(job.queue.get(), timeout=1.0)
                    except asyncio.TimeoutError:
                        if await request.is_disconnected():
                            return
                        continue
                if event is _END:
                    job.remaining = 0
                    return
                if isinstance(event, ApiError):
                    raise event
                yield event
        finally:
            self.engine.cancel(job)

    def base(self, kind: str, job: Job | None = None) -> dict[str, Any]:
        """The fields every response and chunk starts with; a stream's chunks share the job's id."""
        prefix = "chatcmpl" if kind.startswith("chat") else "cmpl"
        if job is not None and not job.uid:
            job.uid = uuid.uuid4().hex
        return {
            "id": f"{prefix}-{job.uid if job is not None else uuid.uuid4().hex}",
            "object": kind,
            "created": int(time.time()),
            "model": self.config.model_id,
        }

    # ------------------------------------------------------------------ endpoints

    async def health(self, request: Any) -> dict[str, Any]:
        return {"status": "ok", "model": self.config.model_id, **self.engine.load()}

    async def models(self, request: Any) -> dict[str, Any]:
        self.check_key(request)
        return {
            "object": "list",
            "data": [{"id": self.config.model_id, "object": "model", "created": self.created, "owned_by": "gptcli"}],
        }

    async def completions(self, request: Any) -> Any:
        from gptcli.generation import Completion, encode_prompt

        self.check_key(request)
        body = await self.read_json(request)
        self.check_model(body)
        raw = body.get("prompt")
        if isinstance(raw, str) or (isinstance(raw, list) and raw and all(isinstance(t, int) for t in raw)):
            raw = [raw]
        if not isinstance(raw, list) or not raw or not all(_is_prompt(p) for p in raw):
            raise ApiError(
                400,
                "'prompt' must be a string, a list of strings, or token ids.",
                param="prompt",
                code="invalid_prompt",
            )
        echo = bool(_field(body, "echo", (bool,), False))
        logprobs = _field(body, "logprobs", (int,), None)
        if logprobs is not None and not 0 <= logprobs <= MAX_LOGPROBS:
            raise ApiError(400, f"'logprobs' must be from 0 to {MAX_LOGPROBS}.", param="logprobs")
        max_tokens = _max_tokens(body, self.config.defaults, allow_zero=echo)
        params = sampling_from(body, self.config.defaults)
        if len(raw) * params.num_return_sequences > MAX_CHOICES:
            raise ApiError(400, f"At most {MAX_CHOICES} completions per request (prompts × n).", param="n")
        stream = bool(_field(body, "stream", (bool,), False))
        if stream and echo and logprobs is not None:
            raise ApiError(400, "'echo' with 'logprobs' is not supported with 'stream'.", param="stream")
        prompts, texts = [], []
        for p in raw:
            text = p if isinstance(p, str) else self.lm.tokenizer.decode(p)
            ids: list[int] = []
            if not self.lm.is_encoder_decoder:
                ids = encode_prompt(self.lm, p) if isinstance(p, str) else list(p)
            if any(not 0 <= t < self.vocab for t in ids):
                raise ApiError(
                    400, f"token ids must be from 0 to {self.vocab - 1}.", param="prompt", code="invalid_prompt"
                )
            prompts.append((ids, text))
            texts.append(text)
        fitted = [self.fit(ids, max_tokens, "prompt") for ids, _ in prompts]
        score_only = max_tokens == 0
        params = params.updated(max_new_tokens=max(1, min(fitted)))
        job = self.new_job(prompts, params, logprobs)
        if echo and logprobs is not None:
            job.prompt_logprobs = logprobs
        if score_only:
            job.seqs = []  # echo with max_tokens 0: the prompt's log-probabilities only
        self.engine.submit(job)
        if stream:
            counted = sum(self.count(*p) for p in prompts) if _include_usage(body) else None
            return self.sse(self._completion_chunks(job, request, texts, echo, counted))
        choices: dict[int, dict[str, Any]] = {}
        scores: dict[int, Any] = {}
        usage = {"prompt_tokens": sum(self.count(*p) for p in prompts), "completion_tokens": 0}
        firsts = {seq.request: p for p, seq in enumerate(job.seqs[:: params.num_return_sequences])}
        async for event in self.events(job, request):
            if isinstance(event, tuple):
                scores[event[1]] = event[2]
            elif isinstance(event, Completion):
                p = firsts[event.request]
                usage["completion_tokens"] += event.completion_tokens
                text = (texts[p] + event.text) if echo else event.text
                lp = None
                if logprobs is not None:
                    lp = self._logprobs(
                        prompts[p][0] if echo else [], scores.get(event.request), event, texts[p] if echo else ""
                    )
                choices[job.choices[(event.request, event.sample)]] = {
                    "text": text,
                    "index": job.choices[(event.request, event.sample)],
                    "logprobs": lp,
                    "finish_reason": _finish(event.finish_reason),
                }
        if score_only:
            for p, (request_id, ids) in enumerate(job.prompts):
                lp = self._logprobs(ids, scores.get(request_id), None, texts[p]) if logprobs is not None else None
                for s in range(params.num_return_sequences):
                    index = p * params.num_return_sequences + s
                    choices[index] = {"text": texts[p], "index": index, "logprobs": lp, "finish_reason": "length"}
        if len(choices) < len(prompts) * params.num_return_sequences:
            raise ApiError(500, "generation stopped before it finished.", type="server_error")
        out = self.base("text_completion")
        out["choices"] = [choices[i] for i in sorted(choices)]
        out["usage"] = {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}
        return out

    def _logprobs(
        self, prompt_ids: list[int], scores: Any, done: Completion | None, prompt_text: str
    ) -> dict[str, Any]:
        """The legacy completions `logprobs` object: tokens, token_logprobs, top_logprobs, text_offset."""
        tok = self.lm.tokenizer
        ids: list[int] = []
        values: list[float | None] = []
        tops: list[dict[str, float] | None] = []
        if prompt_ids:
            scores = scores or [(None, [])] * len(prompt_ids)
            ids += prompt_ids
            values += [s[0] for s in scores]
            tops += [None if s[0] is None else {tok.decode([i]): v for i, v in s[1]} for s in scores]
        if done is not None:
            for token, value, alternatives in done.token_logprobs[: done.completion_tokens]:
                ids.append(token)
                values.append(value)
                tops.append({tok.decode([i]): v for i, v in alternatives})
        tokens = [tok.decode([i]) for i in ids]
        return {
            "tokens": tokens,
            "token_logprobs": values,
            "top_logprobs": tops,
            "text_offset": self._offsets(ids, len(prompt_ids), prompt_text),
        }

    def _offsets(self, ids: list[int], prompt_len: int, prompt_text: str) -> list[int]:
        """Where each token's text starts: in the prompt from the tokenizer's offset mapping (a
        prefix decode per token would be quadratic), after it from the decoded completion."""
        tok = self.lm.tokenizer
        offsets: list[int] = []
        if prompt_len:
            try:
                enc = tok(prompt_text, return_offsets_mapping=True)
                if list(enc["input_ids"]) == ids[:prompt_len]:
                    offsets = [start for start, _ in enc["offset_mapping"]]
            except Exception:  # slow tokenizers have no offset mapping
                offsets = []
            if not offsets:
                offsets = [len(tok.decode(ids[:k], skip_special_tokens=True)) for k in range(prompt_len)]
        base = len(prompt_text) if prompt_len else 0
        for k in range(prompt_len, len(ids)):
            offsets.append(base + len(tok.decode(ids[prompt_len:k], skip_special_tokens=True)))
        return offsets

    async def _completion_chunks(
        self, job: Job, request: Any, texts: list[str], echo: bool, prompt_tokens: int | None
    ) -> AsyncIterator[dict]:
        """Completion chunks; with `prompt_tokens` (stream_options.include_usage) a last chunk with usage."""
        from gptcli.generation import Completion

        completion_tokens = 0
        n = job.seqs[0].params.num_return_sequences if job.seqs else 1
        if echo:
            for index in range(len(job.seqs)):
                chunk = self.base("text_completion", job)
                chunk["choices"] = [
                    {"text": texts[index // n], "index": index, "logprobs": None, "finish_reason": None}
                ]
                yield chunk
        async for event in self.events(job, request, poll=False):
            if isinstance(event, tuple):
                continue
            index = job.choices[(event.request, event.sample)]
            chunk = self.base("text_completion", job)
            done = isinstance(event, Completion)
            text = "" if done else event.text
            reason = _finish(event.finish_reason) if isinstance(event, Completion) else None
            if isinstance(event, Completion):
                completion_tokens += event.completion_tokens
            chunk["choices"] = [{"text": text, "index": index, "logprobs": None, "finish_reason": reason}]
            yield chunk
        if prompt_tokens is not None:
            yield self.usage_chunk("text_completion", job, prompt_tokens, completion_tokens)

    def usage_chunk(self, kind: str, job: Job, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        chunk = self.base(kind, job)
        chunk["choices"] = []
        chunk["usage"] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        return chunk

    async def chat(self, request: Any) -> Any:
        from gptcli.chat.history import Message
        from gptcli.chat.prompt import ChatFormat
        from gptcli.generation import Completion

        self.check_key(request)
        body = await self.read_json(request)
        self.check_model(body)
        raw = body.get("messages")
        if not isinstance(raw, list) or not raw:
            raise ApiError(400, "'messages' must be a non-empty list.", param="messages", code="invalid_messages")
        system_parts, messages = [], []
        for k, m in enumerate(raw):
            role = m.get("role") if isinstance(m, dict) else None
            content = _content(m.get("content") if isinstance(m, dict) else None)
            if role not in ("system", "developer", "user", "assistant") or content is None:
                raise ApiError(
                    400,
                    f"messages[{k}] must have a role (system, user or assistant) and text content.",
                    param=f"messages[{k}]",
                    code="invalid_messages",
                )
            if role in ("system", "developer"):
                system_parts.append(content)
            else:
                messages.append(Message(role, content))
        fmt = ChatFormat(self.lm)
        system = "\n\n".join(system_parts) or None
        max_tokens = _max_tokens(body, self.config.defaults, allow_zero=False)
        params = sampling_from(body, self.config.defaults, stop=fmt.stop)
        try:
            ids = [] if self.lm.is_encoder_decoder else fmt.ids(system, messages)
            encoder_text = fmt.text(system, messages) if self.lm.is_encoder_decoder else None
        except GptcliError as exc:
            raise ApiError(400, str(exc), param="messages", code="invalid_messages") from exc
        params = params.updated(max_new_tokens=self.fit(ids, max_tokens, "messages"))
        job = self.new_job([(ids, encoder_text)], params, None)
        self.engine.submit(job)
        if bool(_field(body, "stream", (bool,), False)):
            return self.sse(self._chat_chunks(job, request, self.count(ids, encoder_text), _include_usage(body)))
        choices: dict[int, dict[str, Any]] = {}
        usage = {"prompt_tokens": self.count(ids, encoder_text), "completion_tokens": 0}
        async for event in self.events(job, request):
            if isinstance(event, Completion):
                index = job.choices[(event.request, event.sample)]
                usage["completion_tokens"] += event.completion_tokens
                choices[index] = {
                    "index": index,
                    "message": {"role": "assistant", "content": event.text.strip()},
                    "logprobs": None,
                    "finish_reason": _finish(event.finish_reason),
                }
        if len(choices) < len(job.seqs):
            raise ApiError(500, "generation stopped before it finished.", type="server_error")
        out = self.base("chat.completion")
        out["choices"] = [choices[i] for i in sorted(choices)]
        out["usage"] = {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}
        return out

    async def _chat_chunks(
        self, job: Job, request: Any, prompt_tokens: int, include_usage: bool
    ) -> AsyncIterator[dict]:
        from gptcli.chat.session import TrimmedStream
        from gptcli.generation import Completion

        completion_tokens = 0
        pending: dict[int, list[str]] = {}
        # The reply is stripped, as `chat` stores it: leading and trailing whitespace never goes out.
        trimmers = {index: TrimmedStream(pending.setdefault(index, []).append) for index in job.choices.values()}
        for index in sorted(trimmers):
            chunk = self.base("chat.completion.chunk", job)
            chunk["choices"] = [
                {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
            ]
            yield chunk
        async for event in self.events(job, request, poll=False):
            index = job.choices[(event.request, event.sample)]
            chunk = self.base("chat.completion.chunk", job)
            if isinstance(event, Completion):
                completion_tokens += event.completion_tokens
                chunk["choices"] = [
                    {"index": index, "delta": {}, "logprobs": None, "finish_reason": _finish(event.finish_reason)}
                ]
                yield chunk
                continue
            trimmers[index](event.text)
            text = "".join(pending[index])
            pending[index].clear()
            if text:
                chunk["choices"] = [
                    {"index": index, "delta": {"content": text}, "logprobs": None, "finish_reason": None}
                ]
                yield chunk
        if include_usage:
            yield self.usage_chunk("chat.completion.chunk", job, prompt_tokens, completion_tokens)

    def sse(self, chunks: AsyncIterator[dict]) -> Any:
        from starlette.responses import StreamingResponse

        async def lines() -> AsyncIterator[str]:
            try:
                async for chunk in chunks:
                    yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
            except ApiError as exc:  # the status line is sent already: the error goes in the stream
                yield f"data: {json.dumps(exc.body())}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(lines(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413, f"The request body is larger than the server's limit of {limit} bytes.", code="request_too_large"
    )


def _is_prompt(p: Any) -> bool:
    return isinstance(p, str) or (
        isinstance(p, list) and bool(p) and all(isinstance(t, int) and not isinstance(t, bool) for t in p)
    )


def _content(content: Any) -> str | None:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    return None


def _finish(reason: str) -> str:
    # OpenAI has "stop" for both a stop string and the end-of-text token.
    return "length" if reason in ("length", "interrupted") else "stop"


def create_app(api: Api) -> Any:
    """The Starlette app: routes, and every error as an OpenAI error body."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    def endpoint(handler: Callable[[Any], Any]) -> Callable[[Request], Any]:
        async def run(request: Request) -> Response:
            try:
                result = await handler(request)
            except ApiError as exc:
                return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
            return result if isinstance(result, Response) else JSONResponse(result)

        return run

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        message = {404: f"No such endpoint: {request.url.path}", 405: f"Method {request.method} is not allowed here."}
        err = ApiError(status, message.get(status, str(getattr(exc, "detail", exc))), code=None)
        return JSONResponse(err.body(), status_code=status)

    async def server_error(request: Request, exc: Exception) -> Response:
        err = ApiError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")
        return JSONResponse(err.body(), status_code=500)

    routes = [
        Route("/health", endpoint(api.health), methods=["GET"]),
        Route("/v1/models", endpoint(api.models), methods=["GET"]),
        Route("/v1/completions", endpoint(api.completions), methods=["POST"]),
        Route("/v1/chat/completions", endpoint(api.chat), methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: server_error})


# --------------------------------------------------------------------------- running it


LOG_FORMAT = "%(asctime)s %(message)s"


def log_config() -> dict[str, Any]:
    """uvicorn's logging with everything (access lines too) on stderr: stdout is for results."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "default": {"format": "%(message)s"},
            "access": {
                "()": "uvicorn.logging.AccessFormatter",
                "fmt": '%(client_addr)s - "%(request_line)s" %(status_code)s',
                "use_colors": False,
            },
        },
        "handlers": {
            "default": {"formatter": "default", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"},
            "access": {"formatter": "access", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"},
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
    }


class Server:
    """uvicorn serving the app, with the engine thread started and stopped around it."""

    def __init__(
        self, lm: LoadedModel, config: ServeConfig, *, host: str = "127.0.0.1", port: int = 8000, sock: Any = None
    ):
        import uvicorn

        self.engine = Engine(lm, config.max_concurrency, config.max_queue)
        self.api = Api(lm, config, self.engine)
        self.sock = sock
        uv_config = uvicorn.Config(
            create_app(self.api),
            host=host,
            port=port,
            log_config=log_config(),
            timeout_graceful_shutdown=cast(Any, config.shutdown_timeout),  # a float works: asyncio.wait_for
            lifespan="off",
            server_header=False,
        )
        self.uvicorn = _Uvicorn(uv_config)

    @property
    def signal(self) -> int | None:
        """The signal that stopped the server (SIGINT, SIGTERM), if one did."""
        return self.uvicorn.stopped_by

    def run(self) -> None:
        self.engine.start()
        try:
            self.uvicorn.run(sockets=[self.sock] if self.sock is not None else None)
        finally:
            self.engine.stop()

    def stop(self) -> None:
        self.uvicorn.should_exit = True

    def started(self) -> bool:
        return bool(self.uvicorn.started)


def _uvicorn_class() -> Any:
    import contextlib
    import signal

    import uvicorn

    class Uvicorn(uvicorn.Server):
        """uvicorn's server, but a signal stops it without being raised again afterwards:
        the CLI turns it into the exit code (SIGTERM 0, Ctrl-C 130)."""

        stopped_by: int | None = None

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            handled = (signal.SIGINT, signal.SIGTERM)
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        def handle_exit(self, sig: int, frame: Any) -> None:
            self.stopped_by = self.stopped_by or sig
            super().handle_exit(sig, frame)

    return Uvicorn


def _Uvicorn(config: Any) -> Any:  # noqa: N802 - builds an instance of the lazily defined class
    return _uvicorn_class()(config)


def listen(host: str, port: int) -> Any:
    """A listening socket on host:port (port 0: a free one); a port in use is a clear error."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        raise GptcliError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}.",
            hint="Pick another --port (or stop what uses this one).",
        ) from exc
    sock.setblocking(False)
    return sock
