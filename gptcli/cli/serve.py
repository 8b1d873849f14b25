"""`gptcli serve`: an OpenAI-compatible HTTP server for one model (core: gptcli.server)."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from gptcli.cli import options as opt

SERVER_PANEL = "Server"
DEFAULT_MAX_CONCURRENCY = 8
DEFAULT_MAX_QUEUE = 64


def serve(
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to listen on; 0.0.0.0 listens on every interface. (default: 127.0.0.1)",
            rich_help_panel=SERVER_PANEL,
            show_default=False,
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(
            "--port",
            help="Port to listen on; 0 picks a free one. (default: 8000)",
            rich_help_panel=SERVER_PANEL,
            show_default=False,
        ),
    ] = 8000,
    api_key: Annotated[
        Optional[str],
        typer.Option(
            "--api-key",
            envvar="GPTCLI_API_KEY",
            help="Require 'Authorization: Bearer KEY' on every request except /health.",
            rich_help_panel=SERVER_PANEL,
            show_default=False,
        ),
    ] = None,
    max_concurrency: Annotated[
        int,
        typer.Option(
            "--max-concurrency",
            help=f"Requests generated at once, batched on the device; others wait in the queue. (default: {DEFAULT_MAX_CONCURRENCY})",
            show_default=False,
            rich_help_panel=SERVER_PANEL,
        ),
    ] = DEFAULT_MAX_CONCURRENCY,
    max_queue: Annotated[
        int,
        typer.Option(
            "--max-queue",
            help=f"Requests that may wait for a slot; beyond that the server answers 503. (default: {DEFAULT_MAX_QUEUE})",
            show_default=False,
            rich_help_panel=SERVER_PANEL,
        ),
    ] = DEFAULT_MAX_QUEUE,
    max_body_mb: Annotated[
        float,
        typer.Option(
            "--max-body-mb",
            help="Largest request body in MiB; a larger one gets 413. (default: 1)",
            rich_help_panel=SERVER_PANEL,
            show_default=False,
        ),
    ] = 1.0,
    shutdown_timeout: Annotated[
        float,
        typer.Option(
            "--shutdown-timeout",
            help="On SIGTERM or Ctrl-C, seconds in-flight requests get to finish before they are cancelled. (default: 10)",
            show_default=False,
            rich_help_panel=SERVER_PANEL,
        ),
    ] = 10.0,
    max_new_tokens: opt.MaxNewTokens = None,
    temperature: opt.Temperature = None,
    top_k: opt.TopK = None,
    top_p: opt.TopP = None,
    min_p: opt.MinP = None,
    repetition_penalty: opt.RepetitionPenalty = None,
    greedy: opt.Greedy = False,
    seed: opt.Seed = None,
    model: opt.Model = None,
    device: opt.Device = None,
    dtype: opt.Dtype = None,
    threads: opt.Threads = None,
    quantize: opt.Quantize = None,
    allow_pickle: opt.AllowPickle = False,
    trust_remote_code: opt.TrustRemoteCode = False,
) -> Any:
    """Serve a model over HTTP with the OpenAI API (/v1/completions, /v1/chat/completions,
    /v1/models, /health). Concurrent requests are batched on the device. The sampling
    options set the defaults a request can override. SIGTERM or Ctrl-C stops it.

    Examples: gptcli serve · gptcli serve --model ./my-model --port 8080 --quantize int8 ·
    gptcli serve --host 0.0.0.0 --api-key "$KEY"
    """
    from gptcli.cli.output import Output
    from gptcli.errors import UsageError
    from gptcli.quantize import parse_scheme
    from gptcli.runtime import check_options
    from gptcli.sampling import SamplingParams

    defaults = SamplingParams().updated(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        repetition_penalty=repetition_penalty,
        greedy=greedy or None,
        seed=seed,
    )
    check_options(device, dtype, threads)
    quant = parse_scheme(quantize)
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be from 0 to 65535 (got {port}).")
    if max_concurrency < 1:
        raise UsageError(f"--max-concurrency must be at least 1 (got {max_concurrency}).")
    if max_queue < 0:
        raise UsageError(f"--max-queue must be 0 or more (got {max_queue}).")
    if not max_body_mb > 0:
        raise UsageError(f"--max-body-mb must be above 0 (got {max_body_mb}).")
    if not shutdown_timeout >= 0:
        raise UsageError(f"--shutdown-timeout must be 0 or more (got {shutdown_timeout}).")
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        from gptcli.errors import GptcliError

        raise GptcliError(
            f"gptcli serve needs starlette and uvicorn ({exc.name} is missing).",
            hint="Install them with: pip install 'starlette>=1.0' 'uvicorn>=0.30' (or, in a gptcli checkout: pip install -e '.[serve]')",
        ) from exc
    from gptcli.server import ServeConfig, Server, listen

    out = Output()
    sock = listen(host, port)  # before the model loads: a port in use fails at once
    lm = out.open_model(
        model,
        device=device,
        dtype=dtype,
        threads=threads,
        quantize=quant,
        allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
    )
    aliases = tuple(a for a in dict.fromkeys([model or "", str(lm.path), lm.path.name]) if a and a != lm.name)
    config = ServeConfig(
        model_id=lm.name,
        aliases=aliases,
        defaults=defaults,
        api_key=api_key or None,
        max_concurrency=max_concurrency,
        max_queue=max_queue,
        max_body_bytes=int(max_body_mb * (1 << 20)),
        shutdown_timeout=shutdown_timeout,
    )
    server = Server(lm, config, sock=sock)
    if not server.engine.fast:
        why = "an encoder-decoder model" if lm.is_encoder_decoder else "a model the batching decode loop cannot drive"
        out.note(f"Note: {lm.name} is {why}: requests are served one at a time.")
    if not api_key and not _is_loopback(host):
        out.warn(
            f"listening on {host} without --api-key: anyone who can reach this machine can use the model. "
            "Set --api-key (or GPTCLI_API_KEY)."
        )
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    weights = f", {lm.quantization.describe()}" if lm.quantization is not None else ""
    out.note(
        f"Serving {lm.name} at http://{shown}:{bound[1]}/v1 (OpenAI API{weights}; up to {max_concurrency} "
        f"requests batched at once). Ctrl-C stops."
    )
    server.run()
    import signal

    if server.signal == signal.SIGINT:
        out.note("Stopped (Ctrl-C).")
        raise typer.Exit(code=130)
    out.note("Stopped.")
    return 0


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
