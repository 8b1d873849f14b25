"""`gptcli chat`: an interactive conversation in a terminal, or one reply per input in a script."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from gptcli.cli import options as opt


def chat(
    message: Annotated[
        Optional[str],
        typer.Argument(
            help="Send this one message and print the reply (piped stdin comes before it).", show_default=False
        ),
    ] = None,
    system: Annotated[
        Optional[str],
        typer.Option("--system", "-s", help="System prompt (replaces the one in --history).", show_default=False),
    ] = None,
    history: Annotated[
        Optional[Path],
        typer.Option(
            "--history",
            help="Conversation file (JSONL role/content records): loaded first, and every "
            "new exchange is appended to it.",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    jsonl: Annotated[
        bool,
        typer.Option(
            "--jsonl", help='stdin holds JSONL messages {"role", "content"}; each user message gets one reply.'
        ),
    ] = False,
    max_new_tokens: opt.MaxNewTokens = None,
    temperature: opt.Temperature = None,
    top_k: opt.TopK = None,
    top_p: opt.TopP = None,
    min_p: opt.MinP = None,
    repetition_penalty: opt.RepetitionPenalty = None,
    greedy: opt.Greedy = False,
    stop: opt.Stop = None,
    seed: opt.Seed = None,
    prompt_lookup: opt.PromptLookup = None,
    draft_model: opt.DraftModel = None,
    draft_tokens: opt.DraftTokens = None,
    as_json: opt.Json = False,
    stats: opt.Stats = False,
    model: opt.Model = None,
    api_base: opt.ApiBase = None,
    timeout: opt.Timeout = None,
    device: opt.Device = None,
    dtype: opt.Dtype = None,
    threads: opt.Threads = None,
    quantize: opt.Quantize = None,
    allow_pickle: opt.AllowPickle = False,
    trust_remote_code: opt.TrustRemoteCode = False,
) -> None:
    """Chat with a model. In a terminal: an interactive chat (/help lists its commands).
    From a script: each message on stdin (or MESSAGE) gets one reply on stdout.

    Examples: gptcli chat · gptcli chat --system "Answer briefly." ·
    echo "and then?" | gptcli chat --history story.jsonl · gptcli chat --jsonl --json < messages.jsonl
    """
    from gptcli.chat.history import HistoryFile, Message, parse_messages
    from gptcli.cli import speculate
    from gptcli.cli.output import Output
    from gptcli.errors import UsageError
    from gptcli.inputs import gather_prompt, read_stdin, stdin_is_tty
    from gptcli.quantize import parse_scheme
    from gptcli.remote import default_params
    from gptcli.runtime import check_options

    # Everything the user typed or piped is checked before any model loads.
    params = default_params(model).updated(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        repetition_penalty=repetition_penalty,
        greedy=greedy or None,
        stop=stop or None,
        seed=seed,
    )
    check_options(device, dtype, threads)
    quant = parse_scheme(quantize)
    speculate.check(prompt_lookup, draft_model, draft_tokens)
    interactive = message is None and stdin_is_tty()
    if interactive and (jsonl or as_json):
        raise UsageError(
            f"{'--jsonl' if jsonl else '--json'} is for scripted use, but stdin is a terminal.",
            hint='Pipe messages in, e.g. echo "Hi" | gptcli chat --json',
        )
    inputs: list[Message] = []
    if jsonl:
        if message is not None:
            raise UsageError("give either MESSAGE or --jsonl messages on stdin, not both.")
        inputs = parse_messages(read_stdin(), "stdin", default_role="user")
        if not any(m.role == "user" for m in inputs):
            raise UsageError("stdin has no user message to reply to.")
    elif not interactive:
        text = gather_prompt(message).strip()
        if not text:
            raise UsageError("the message is empty.")
        inputs = [Message("user", text)]
    history_file = HistoryFile(history) if history is not None else None
    conversation = history_file.load() if history_file else None

    from gptcli.chat.session import ChatSession

    out = Output(as_json=as_json, stats=stats)
    lm, speculation = speculate.open_models(
        out,
        model,
        api_base=api_base,
        timeout=timeout,
        quantize=quant,
        prompt_lookup=prompt_lookup,
        draft_model=draft_model,
        draft_tokens=draft_tokens,
        device=device,
        dtype=dtype,
        threads=threads,
        allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
    )
    session = ChatSession(lm, params, conversation, history_file, notice=out.note, speculation=speculation)
    if system is not None:
        session.conv.system = system or None  # written to --history with the first exchange
    if interactive:
        from gptcli.cli.chat_repl import Repl

        if conversation and conversation.messages:
            out.note(f"Continuing the conversation in {history} ({len(conversation.messages)} messages).")
        Repl(session, out).run()
    else:
        from gptcli.cli.chat_script import run_scripted

        run_scripted(session, inputs, out)
