"""The speculative-decoding options (--prompt-lookup, --draft-model, --draft-tokens) as the
inference commands share them: checked before anything loads, the draft model opened after the
model, through the same loading layer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gptcli.cli.output import Output
    from gptcli.loading import LoadedModel
    from gptcli.remote import RemoteModel
    from gptcli.speculative import Speculation


def check(prompt_lookup: int | None, draft_model: str | None, draft_tokens: int | None) -> bool:
    """Usage errors (exit 2) before any model loads; True when speculation was asked for."""
    from gptcli.speculative import check_options

    return check_options(prompt_lookup, draft_model, draft_tokens)


def open_models(
    out: Output,
    spec: str | None,
    *,
    api_base: str | None,
    timeout: float | None,
    quantize: str | None,
    prompt_lookup: int | None,
    draft_model: str | None,
    draft_tokens: int | None,
    **load: Any,
) -> tuple[LoadedModel | RemoteModel, Speculation | None]:
    """The model (local or remote) and the run's Speculation, as every inference command opens them.
    `load`: device, dtype, threads, allow_pickle, trust_remote_code (the draft model's too)."""
    lm = out.open_backend(spec, api_base=api_base, timeout=timeout, quantize=quantize, **load)
    return lm, open_speculation(out, lm, prompt_lookup, draft_model, draft_tokens, **load)


def open_speculation(
    out: Output,
    lm: LoadedModel | RemoteModel,
    prompt_lookup: int | None,
    draft_model: str | None,
    draft_tokens: int | None,
    **load: Any,
) -> Speculation | None:
    """The run's Speculation (None when not asked for). `load`: the model's loading options
    (device, dtype, threads, allow_pickle, trust_remote_code), used for the draft model too."""
    from gptcli import speculative
    from gptcli.remote import RemoteModel

    if not speculative.check_options(prompt_lookup, draft_model, draft_tokens):
        return None
    speculative.check_target(lm)  # refuses a remote model
    assert not isinstance(lm, RemoteModel)
    spec = speculative.Speculation(prompt_lookup=prompt_lookup or 0, on_fallback=out.note)
    if draft_model is not None:
        import torch

        from gptcli.cli.output import describe_load
        from gptcli.loading import open_model, resolve_source

        # Named --draft-model in any message about where it is.
        source = resolve_source(draft_model, allow_pickle=load.get("allow_pickle", False), flag="--draft-model")
        threads = torch.get_num_threads()
        draft, seconds = open_model(str(source.path), **load)
        # Loading picks CPU threads for the model's size; the model's choice is the one that counts.
        torch.set_num_threads(threads)
        draft.name = draft_model
        speculative.check_draft(lm, draft)
        out.stats("Draft model: " + describe_load(draft, seconds))
        spec.draft = draft
        spec.draft_tokens = draft_tokens or speculative.DEFAULT_DRAFT_TOKENS
    return spec
