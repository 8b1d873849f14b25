"""A small OpenAI-shaped test server (a test double): starlette under uvicorn in a thread on 127.0.0.1.

It records every request (path, headers, JSON body) and answers `/v1/completions` and
`/v1/chat/completions` (streamed or not) with replies the test sets, in the shapes the official
client parses: `text/event-stream` chunks, `data: [DONE]`, `usage` when asked for it, OpenAI-style
error bodies. Tests only; gptcli serve is the real server.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Reply:
    pieces: list[str]
    finish_reason: str = "length"
    stop_reason: Any = None  # vLLM / gptcli serve extension; None leaves it out
    prompt_tokens: int = 5
    completion_tokens: int | None = None  # default: one per piece


def default_reply(body: dict) -> Reply:
    """Names what it was asked, so tests can tell replies apart: "<prompt>!" in two pieces."""
    if "messages" in body:
        text = body["messages"][-1]["content"]
    else:
        text = body.get("prompt", "")
    return Reply(["re:", f" {text}!"], prompt_tokens=len(str(text).split()) + 1)


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict


@dataclass
class Double:
    models: tuple[str, ...] = ("tiny",)
    requests: list[Recorded] = field(default_factory=list)
    respond: Callable[[dict], Reply] = default_reply
    fail: list[tuple[int, dict]] = field(default_factory=list)  # (status, headers) answered first, in order
    usage: bool = True  # send usage when the client asks for it
    delay_s: float = 0.0  # before answering (timeouts)
    piece_delay_s: float = 0.0  # between streamed pieces (a slow model)
    disconnects: int = 0  # streams whose client went away before the end
    error_message: str = "something went wrong"
    logprobs: Callable[[str], dict | None] | None = None  # echo scoring: text -> logprobs object
    host: str = "127.0.0.1"
    port: int = 0
    _server: Any = None
    _thread: Any = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def reset(self) -> None:
        self.requests.clear()
        self.respond = default_reply
        self.fail.clear()
        self.usage = True
        self.delay_s = 0.0
        self.piece_delay_s = 0.0
        self.disconnects = 0
        self.error_message = "something went wrong"
        self.logprobs = None

    # ------------------------------------------------------------------ app

    def app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, StreamingResponse
        from starlette.routing import Route

        async def models(request: Request) -> Any:
            return JSONResponse(
                {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "test"} for m in self.models]}
            )

        async def generate(request: Request) -> Any:
            body = await request.json()
            self.requests.append(Recorded(request.url.path, dict(request.headers), body))
            # Decided on arrival: a handler still sleeping after its client gave up must not take a
            # failure meant for a later request.
            failure = self.fail.pop(0) if self.fail else None
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if failure:
                status, headers = failure
                err = {"message": self.error_message, "type": "error", "param": None, "code": status}
                return JSONResponse({"error": err}, status_code=status, headers=headers)
            if body.get("model") not in self.models:
                err = {"message": f"model '{body.get('model')}' not found", "type": "invalid_request_error"}
                return JSONResponse({"error": {**err, "param": "model", "code": "model_not_found"}}, status_code=404)
            chat = request.url.path.endswith("/chat/completions")
            if body.get("echo") and self.logprobs is not None:
                return self._scored(body)
            reply = self.respond(body)
            if not body.get("stream"):
                return JSONResponse(self._whole(body, reply, chat))
            want_usage = bool((body.get("stream_options") or {}).get("include_usage")) and self.usage

            async def events():
                try:
                    for piece in reply.pieces:
                        yield _sse(self._chunk(body, chat, piece, None, reply))
                        await asyncio.sleep(self.piece_delay_s)
                    yield _sse(self._chunk(body, chat, "", reply.finish_reason, reply))
                    if want_usage:
                        yield _sse({**self._head(body, chat), "choices": [], "usage": _usage(reply)})
                    yield "data: [DONE]\n\n"
                except (asyncio.CancelledError, GeneratorExit):
                    self.disconnects += 1
                    raise

            return StreamingResponse(events(), media_type="text/event-stream")

        return Starlette(
            routes=[
                Route("/v1/models", models),
                Route("/v1/completions", generate, methods=["POST"]),
                Route("/v1/chat/completions", generate, methods=["POST"]),
            ]
        )

    def _head(self, body: dict, chat: bool) -> dict:
        kind = "chat.completion.chunk" if chat else "text_completion"
        return {"id": "cmpl-test", "object": kind, "created": int(time.time()), "model": body["model"]}

    def _chunk(self, body: dict, chat: bool, text: str, finish: str | None, reply: Reply) -> dict:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if chat:
            choice["delta"] = {"role": "assistant", "content": text} if text else {}
        else:
            choice.update(text=text, logprobs=None)
        if finish and reply.stop_reason is not None:
            choice["stop_reason"] = reply.stop_reason
        return {**self._head(body, chat), "choices": [choice]}

    def _whole(self, body: dict, reply: Reply, chat: bool) -> dict:
        text = "".join(reply.pieces)
        choice: dict[str, Any] = {"index": 0, "finish_reason": reply.finish_reason}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice.update(text=text, logprobs=None)
        out = {**self._head(body, chat), "object": "chat.completion" if chat else "text_completion"}
        return {**out, "choices": [choice], "usage": _usage(reply)}

    def _scored(self, body: dict) -> Any:
        from starlette.responses import JSONResponse

        assert self.logprobs is not None
        prompt = body["prompt"]
        lp = self.logprobs(prompt)
        choice = {"index": 0, "text": prompt, "logprobs": lp, "finish_reason": "length"}
        n = len(lp["tokens"]) if lp else 0
        usage = {"prompt_tokens": n, "completion_tokens": 0, "total_tokens": n}
        return JSONResponse({**self._head(body, False), "choices": [choice], "usage": usage})

    # ------------------------------------------------------------------ running

    def start(self) -> Double:
        import uvicorn

        config = uvicorn.Config(self.app(), host=self.host, port=0, log_level="error", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)


def _usage(reply: Reply) -> dict:
    done = reply.completion_tokens if reply.completion_tokens is not None else len(reply.pieces)
    return {"prompt_tokens": reply.prompt_tokens, "completion_tokens": done, "total_tokens": reply.prompt_tokens + done}


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n"
