"""`gptcli translate`: a line-aligned translation filter (one output line per input line)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from gptcli.cli import options as opt
from gptcli.sampling import SamplingParams

# Translation decodes greedily unless --temperature asks for sampling.
DEFAULTS = SamplingParams(temperature=0.0)


def translate(
    text: Annotated[
        Optional[str],
        typer.Argument(
            help="Text to translate (each line separately). '-' or no text with piped stdin reads stdin.",
            show_default=False,
        ),
    ] = None,
    target: Annotated[
        Optional[str],
        typer.Option("--to", help="Target language: ISO 639-1 code or name (fr, French).", show_default=False),
    ] = None,
    source: Annotated[
        Optional[str],
        typer.Option("--from", help="Source language; optional when the model can tell.", show_default=False),
    ] = None,
    file: opt.InputFile = None,
    output: Annotated[
        Optional[Path],
        typer.Option(
            "--output",
            "-o",
            help="Write the translations to this file (complete or not at all).",
            show_default=False,
            dir_okay=False,
        ),
    ] = None,
    references: Annotated[
        Optional[Path],
        typer.Option(
            "--references",
            "-r",
            help="Score against references: one per input line, or a .tsv of source<TAB>reference pairs. Prints BLEU and chrF.",
            show_default=False,
            dir_okay=False,
        ),
    ] = None,
    list_languages: Annotated[
        bool, typer.Option("--list-languages", help="List the language codes and names, and exit.")
    ] = False,
    batch_size: opt.TranslateBatchSize = None,
    max_new_tokens: Annotated[
        Optional[int],
        typer.Option(
            "--max-new-tokens",
            "-t",
            help="Most tokens per translated piece. (default: twice the source, plus 10)",
            rich_help_panel=opt.SAMPLING_PANEL,
            show_default=False,
        ),
    ] = None,
    num_beams: opt.NumBeams = None,
    temperature: Annotated[
        Optional[float],
        typer.Option(
            "--temperature",
            help=f"Above 0 samples instead of greedy decoding. (default: {DEFAULTS.temperature:g})",
            rich_help_panel=opt.SAMPLING_PANEL,
            show_default=False,
        ),
    ] = None,
    top_k: opt.TopK = None,
    top_p: opt.TopP = None,
    min_p: opt.MinP = None,
    repetition_penalty: opt.RepetitionPenalty = None,
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
    """Translate text line by line: exactly one output line per input line, in order.

    Examples: gptcli translate "I like tea." --to fr · cat notes.txt | gptcli translate --to fr > notes.fr.txt ·
    gptcli translate --file items.jsonl --to de -m Helsinki-NLP/opus-mt-en-de · gptcli translate -r pairs.tsv --from en --to fr
    """
    from gptcli.cli import speculate
    from gptcli.cli.output import Output
    from gptcli.errors import UsageError
    from gptcli.quantize import parse_scheme
    from gptcli.runtime import check_options
    from gptcli.translation import languages

    out = Output(as_json=as_json, stats=stats)
    if list_languages:
        return _list_languages(out)
    # Everything the user typed is checked before any model loads.
    if target is None:
        raise UsageError(
            "--to is required: the language to translate into.", hint="For example --to fr or --to French."
        )
    tgt = languages.resolve(target, "--to")
    src = languages.resolve(source, "--from") if source is not None else None
    if src is not None and src == tgt:
        raise UsageError(f"--to and --from are both {tgt}; nothing to translate.")
    params = DEFAULTS.updated(
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        repetition_penalty=repetition_penalty,
        num_beams=num_beams,
        seed=seed,
        max_new_tokens=max_new_tokens,
    )
    check_options(device, dtype, threads)
    quant = parse_scheme(quantize)
    speculating = speculate.check(prompt_lookup, draft_model, draft_tokens)
    if speculating and params.num_beams > 1:
        raise UsageError("speculative decoding (--prompt-lookup, --draft-model) does not work with --num-beams.")
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1 (got {batch_size}).")
    refs, feed = _inputs(text, file, references)

    import warnings

    from gptcli.cli.output import LineSink
    from gptcli.remote import RemoteModel, check_remote_options
    from gptcli.translation.defaults import default_model
    from gptcli.translation.families import apply_plan, make_plan, remote_plan
    from gptcli.translation.pipeline import Translator

    spec = model
    if not spec:
        spec, bundled_src = default_model(src, tgt)
        src = src or bundled_src
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # library advice (e.g. "install sacremoses") is not the user's business
        lm, speculation = speculate.open_models(
            out,
            spec,
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
    if isinstance(lm, RemoteModel):
        check_remote_options(params)
        plan = remote_plan(src, tgt)
    else:
        plan = make_plan(lm, src, tgt)
        apply_plan(lm, plan)
    for note in plan.notes:
        out.warn(note)
    translator = Translator(
        lm,
        plan,
        params,
        max_new_tokens=max_new_tokens,
        # Speculative decoding works one piece at a time: one per batch unless told otherwise.
        batch_size=batch_size or (1 if speculating else opt.TRANSLATE_BATCH_SIZE),
        speculation=speculation,
    )

    sink = LineSink(out, output) if (output is not None or refs is None) else None
    hypotheses: list[str] = []
    try:
        for result in translator.run(feed):
            for warning in result.warnings:
                out.warn(warning)
            if refs is not None:
                hypotheses.append(result.text.strip())
            if sink is not None:
                # JSONL in gives JSONL out: the records come back with "translation" added.
                structured = (as_json and refs is None) or result.line.record is not None
                if structured:
                    sink.record(result.to_record(lm.name, plan))
                else:
                    sink.line(result.text)
        if sink is not None:
            sink.commit()
    finally:
        if sink is not None:
            sink.discard()
        out.stats(translator.stats.line())
    if refs is not None:
        _report_scores(out, refs, hypotheses, lm.name, plan, translator.stats)


def _inputs(text, file, references):
    """(references or None, LineFeed) from the argument, --file, --references pairs or stdin."""
    from gptcli.errors import InputError, UsageError
    from gptcli.inputs import stdin_is_tty
    from gptcli.translation.scoring import read_references
    from gptcli.translation.sources import LineFeed, file_lines, stdin_lines, text_lines

    refs = read_references(references) if references is not None else None
    if text is not None and file is not None:
        raise UsageError("give either text or --file, not both.")
    if refs is not None and refs.sources is not None:
        if text is not None or file is not None:
            raise UsageError(f"{references} holds the sources to translate; don't pass text or --file too.")
        return refs, LineFeed(refs.source_lines())
    if file is not None:
        lines = file_lines(file)
    elif text is not None and text != "-":
        lines = text_lines(text, "the text", jsonl=False)
    elif text == "-" or not stdin_is_tty():
        if text == "-" and stdin_is_tty():
            raise UsageError(
                "'-' means stdin, but stdin is a terminal.", hint="Pipe text in, or give it as an argument."
            )
        if refs is not None:
            lines = file_lines("-")  # scoring needs every line anyway
        else:
            return None, LineFeed(stdin_lines())
    else:
        raise UsageError(
            "no text given.", hint='Pass it, e.g. gptcli translate "Good morning" --to fr, or pipe text in.'
        )
    if refs is not None and len(lines) != len(refs.refs):
        raise InputError(
            f"{len(lines)} input lines but {len(refs.refs)} references in {references}: they must pair up line by line."
        )
    return refs, LineFeed(lines)


def _report_scores(out, refs, hypotheses, model_name, plan, run_stats) -> None:
    from gptcli.translation.scoring import score_record

    result = score_record(refs, hypotheses, model_name, plan, run_stats.lines_per_s)
    if out.as_json:
        out.record(result)
        return
    pair = f"{plan.source.code}→{plan.target.code}" if plan.source else f"→{plan.target.code}"
    out.text(
        f"BLEU {result['bleu']:.2f}  ({result['bleu_signature']})\n"
        f"chrF {result['chrf']:.2f}  ({result['chrf_signature']})\n"
        f"{result['exact']} of {result['sentences']} sentences exactly as a reference\n"
        f"{result['sentences']} sentences, {result['references']} references, model {model_name}, {pair}\n"
    )


def _list_languages(out) -> None:
    from gptcli.translation.languages import all_languages

    for lang in all_languages():
        if out.as_json:
            out.record(
                {"code": lang.code, "name": lang.name, "iso3": lang.iso3, "nllb": lang.nllb, "mbart": lang.mbart}
            )
        else:
            out.text(f"{lang.code}\t{lang.name}\n")
