"""The model-loading layer every command shares.

`resolve_source` turns what the user typed for `--model` into a local folder
(bundled name, folder, or Hub id served from the cache or downloaded), checking
safety rules before any weight byte is read. `load_model` then builds the model
and tokenizer with transformers and reports what callers need to know;
`open_model` is what every inference command calls: runtime, weights, CPU tuning.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptcli import bundled
from gptcli.errors import ModelLoadError, UsageError

if TYPE_CHECKING:
    from gptcli.runtime import Runtime

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# What we fetch from the Hub: configs, tokenizers, safetensors weights. Pickle
# weights are only fetched when the user allowed them.
_HUB_PATTERNS = [
    "*.json",
    "*.safetensors",
    "*.model",
    "*.txt",
    "*.tiktoken",
    "*.jinja",
    "tokenizer*",
    "*.py",
]


@dataclass
class ModelSource:
    spec: str  # what the user typed (or the default's name)
    path: Path  # local folder with config and weights
    kind: str  # "bundled", "folder" or "hub"


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    name: str
    path: Path
    runtime: Runtime
    context_length: int
    is_encoder_decoder: bool
    has_chat_template: bool
    eos_token_ids: list[int] = field(default_factory=list)
    pad_token_id: int | None = None
    is_adapter: bool = False
    quantization: Any = None  # gptcli.quantize.QuantReport when the linear layers are quantized

    @property
    def device(self):
        return self.runtime.device


def default_model_name() -> str | None:
    env = os.environ.get("GPTCLI_MODEL")
    if env:
        return env
    return bundled.DEFAULT_MODEL if bundled.path_of(bundled.DEFAULT_MODEL) else None


def _looks_like_path(spec: str) -> bool:
    # Hub ids have at most one slash ("org/name"); anything else is meant as a path.
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or (os.sep != "/" and os.sep in spec)


def resolve_source(spec: str | None, *, allow_pickle: bool = False, flag: str = "--model") -> ModelSource:
    """The local folder for what the user passed with `flag` (named in every message)."""
    spec = spec or default_model_name()
    if not spec:
        raise UsageError(
            "no model given.",
            hint="Pass --model PATH|HUB_ID (or set GPTCLI_MODEL); `gptcli models` lists bundled models.",
        )
    from gptcli.remote import is_remote

    if is_remote(spec):
        # A remote model has no weights here; the commands that take one never get this far.
        raise UsageError(
            f"{flag} {spec} is a model on a remote server; this command needs its weights here.",
            hint="Pass a bundled name, a local folder or a Hub id.",
        )
    path = bundled.path_of(spec)
    if path is not None:
        return ModelSource(spec, path, "bundled")
    local = Path(spec).expanduser()
    if local.is_dir():
        return ModelSource(spec, local.resolve(), "folder")
    if local.exists():
        raise UsageError(f"{flag} '{spec}' is a file; pass the folder that holds config.json.")
    if _looks_like_path(spec) or not _HUB_ID_RE.match(spec):
        raise UsageError(
            f"{flag} folder '{spec}' does not exist.",
            hint="Pass an existing folder, a Hub id like 'gpt2', or a bundled name (`gptcli models`).",
        )
    return ModelSource(spec, _hub_snapshot(spec, allow_pickle, flag), "hub")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _connection_failure(exc: BaseException) -> BaseException | None:
    """The network error behind a Hub failure (refused, unreachable, DNS, timeout), if that is what it was.

    huggingface_hub reports "cannot reach the Hub and nothing is cached" as LocalEntryNotFoundError,
    whose name reads like "not found"; what happened is in its cause chain.
    """
    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        exc = current
        seen.add(id(exc))
        names = {cls.__name__ for cls in type(exc).__mro__}
        if isinstance(exc, (ConnectionError, TimeoutError)) or names & {
            "ConnectError",
            "ConnectTimeout",
            "TransportError",
            "NetworkError",
            "TimeoutException",
            "ProxyError",
            "SSLError",
            "MaxRetryError",
            "NewConnectionError",
            "NameResolutionError",
            "OfflineModeIsEnabled",
        }:
            return exc
        current = exc.__cause__ or exc.__context__
    return None


def _hub_snapshot(repo_id: str, allow_pickle: bool, flag: str = "--model") -> Path:
    from huggingface_hub import snapshot_download

    what = "tokenizer" if flag == "--tokenizer" else "model"
    patterns = _HUB_PATTERNS + (["*.bin", "*.pt", "*.pth"] if allow_pickle else [])
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass  # not cached (or partially): try the network unless told not to
    if _offline():
        raise ModelLoadError(
            f"{what} '{repo_id}' ({flag}) is not in the local Hugging Face cache and HF_HUB_OFFLINE is set.",
            hint=f"Download it once while online, or pass a local folder with {flag}.",
        )
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, etag_timeout=10))
    except Exception as exc:  # network errors come in many types; tell apart the ones that matter
        names = {cls.__name__ for cls in type(exc).__mro__}
        network = _connection_failure(exc)
        if network is not None:
            reason = str(network).strip().splitlines()[0] if str(network).strip() else ""
            reason = f"{type(network).__name__}: {reason}" if reason else type(network).__name__
            raise ModelLoadError(
                f"could not connect to the Hugging Face Hub to download {what} '{repo_id}' ({flag}): {reason}.",
                hint=f"Check the network connection; without one, pass a local folder with {flag} "
                "(or set HF_HUB_OFFLINE=1 to use only what is cached).",
            ) from exc
        if names & {"RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError"}:
            raise ModelLoadError(
                f"{what} '{repo_id}' ({flag}) was not found on the Hugging Face Hub (or is private or gated).",
                hint=f"Check the id, or pass a local folder with {flag}.",
            ) from exc
        raise ModelLoadError(
            f"{what} '{repo_id}' ({flag}) is not cached and could not be downloaded ({type(exc).__name__}).",
            hint=f"Connect to the network once, or pass a local folder with {flag}.",
        ) from exc


def check_weights(folder: Path, *, allow_pickle: bool) -> int:
    """Refuse pickle and catch truncation before loading; returns the number of weights (0: unknown)."""
    safetensors = sorted(folder.glob("*.safetensors"))
    if safetensors:
        return sum(check_safetensors_file(path) for path in safetensors)
    pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles and not allow_pickle:
        raise ModelLoadError(
            f"{folder} only has pickle weights ({pickles[0].name}); loading pickle can run arbitrary code.",
            hint="Convert them to safetensors, or pass --allow-pickle if you trust the source.",
        )
    if not pickles:
        raise ModelLoadError(f"no weights (*.safetensors) found in {folder}.")
    return 0  # pickle files have no header to count from


def check_safetensors_file(path: Path) -> int:
    """Validate the header and size of a safetensors file without reading the tensors.

    Returns the number of weights it holds (from the header), for runtime choices by size.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("file is shorter than its header")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > 100_000_000:
                raise ValueError("header length is past the end of the file")
            header = json.loads(f.read(n))
        end = max(
            (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
            default=0,
        )
        if 8 + n + end > size:
            raise ValueError(f"file is truncated ({size} bytes, needs {8 + n + end})")
        return sum(math.prod(int(d) for d in v.get("shape", [])) for k, v in header.items() if k != "__metadata__")
    except (ValueError, KeyError, TypeError, OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"weight file {path} is corrupt: {exc}.") from exc


def context_length(config: Any, tokenizer: Any = None) -> int:
    """The longest sequence a model takes: the config's position limit, else the tokenizer's
    model_max_length when it is a real limit, else 2048. The one rule of every command
    (generation, chat, translation, evaluation, and the block sizes of train and finetune)."""
    for attr in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and 0 < value < 1_000_000:
        return value
    return 2048


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    gen_cfg = getattr(model, "generation_config", None)
    for value in (getattr(gen_cfg, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            value = [value]
        for v in value or []:
            if v is not None and v not in ids:
                ids.append(int(v))
    return ids


def quiet_transformers() -> None:
    """Keep library chatter (progress bars, advisory warnings) off our stderr."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def load_config(folder: Path, *, trust_remote_code: bool) -> Any:
    from transformers import AutoConfig

    quiet_transformers()

    raw = _read_json(folder / "config.json")
    if raw.get("auto_map") and not trust_remote_code:
        raise ModelLoadError(
            f"{folder.name} needs custom code from the model repository to load.",
            hint="Pass --trust-remote-code only if you trust its author.",
        )
    try:
        return AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        raise ModelLoadError(f"cannot read the config of {folder}: {str(exc).splitlines()[0]}") from exc


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ModelLoadError(f"{path.parent} has no {path.name}; it is not a Hugging Face model folder.")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}.") from exc
    if not isinstance(value, dict):
        # A list or a number parses, then fails far away (`'list' object has no attribute 'get'`).
        kind = {list: "an array", str: "a string", bool: "true or false", type(None): "null"}.get(
            type(value), "a number"
        )
        raise ModelLoadError(f"{path} holds {kind}, not a JSON object: it is not a valid {path.name}.")
    return value


def folder_quantization(folder: Path) -> dict | None:
    """The quantization_config of a folder `gptcli quantize` wrote; None for a float model."""
    from gptcli.quantize import quantization_config

    path = folder / "config.json"
    return quantization_config(_read_json(path)) if path.is_file() else None


def load_tokenizer(folder: Path, *, trust_remote_code: bool = False, padding_side: str = "left") -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelLoadError(f"cannot load the tokenizer in {folder}: {str(exc).splitlines()[0]}") from exc
    tok.padding_side = padding_side
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    spec: str | None,
    runtime: Any,
    *,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    for_training: bool = False,
) -> LoadedModel:
    """Load model + tokenizer from anything `--model` accepts, onto `runtime`'s device and dtype."""
    source = resolve_source(spec, allow_pickle=allow_pickle)
    folder = source.path
    adapter_cfg = folder / "adapter_config.json"
    if adapter_cfg.is_file():
        return _load_adapter(source, runtime, allow_pickle, trust_remote_code, for_training)

    config = load_config(folder, trust_remote_code=trust_remote_code)
    n_params = check_weights(folder, allow_pickle=allow_pickle)
    qcfg = folder_quantization(folder)
    if qcfg is not None and for_training:
        raise ModelLoadError(
            f"{source.spec} holds quantized weights (`gptcli quantize`); training needs float weights.",
            hint="Train or finetune the float model, then quantize the result.",
        )
    if not for_training:
        from gptcli.runtime import fit_to_model

        runtime = fit_to_model(runtime, n_params)
    # Decoder-only prompts are padded on the left so every row's last token is the next to
    # continue; an encoder's input is padded on the right, as its tokenizer does by default,
    # since left padding shifts a short source's positions and changes its translation.
    side = "right" if getattr(config, "is_encoder_decoder", False) else "left"
    tokenizer = load_tokenizer(folder, trust_remote_code=trust_remote_code, padding_side=side)
    if qcfg is not None:
        from gptcli.quantize import load_quantized

        model, report = load_quantized(
            folder, config, qcfg, runtime, auto_class=_auto_class(config), trust_remote_code=trust_remote_code
        )
        return _describe(model, tokenizer, source, runtime, config, quantization=report)
    model = _instantiate(folder, config, runtime, allow_pickle, trust_remote_code)
    if not for_training:
        model.eval()
    return _describe(model, tokenizer, source, runtime, config)


def _auto_class(config: Any) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM


def _instantiate(folder: Path, config: Any, runtime: Any, allow_pickle: bool, trust_remote_code: bool) -> Any:
    auto = _auto_class(config)
    try:
        model = auto.from_pretrained(
            folder,
            config=config,
            dtype=runtime.dtype,
            use_safetensors=None if allow_pickle else True,
            trust_remote_code=trust_remote_code,
        )
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot load the model in {folder}: {first}") from exc
    return model.to(runtime.device)


def _describe(model: Any, tokenizer: Any, source: ModelSource, runtime: Any, config: Any, **extra) -> LoadedModel:
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=source.spec,
        path=source.path,
        runtime=runtime,
        context_length=context_length(config, tokenizer),
        is_encoder_decoder=bool(getattr(config, "is_encoder_decoder", False)),
        has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
        eos_token_ids=_eos_ids(model, tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def _load_adapter(
    source: ModelSource, runtime: Any, allow_pickle: bool, trust_remote_code: bool, for_training: bool
) -> LoadedModel:
    """A LoRA adapter folder (from `gptcli finetune --lora`): load its base, then apply it."""
    raw = _read_json(source.path / "adapter_config.json")
    base_spec = raw.get("base_model_name_or_path")
    if isinstance(base_spec, str):
        base_spec = bundled.recorded_base(base_spec)
    if not base_spec:
        raise ModelLoadError(f"{source.path}/adapter_config.json does not name its base model.")
    base = load_model(
        base_spec, runtime, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, for_training=for_training
    )
    import warnings

    from peft import PeftModel

    with warnings.catch_warnings():  # library deprecation notices are not the user's concern
        warnings.simplefilter("ignore", FutureWarning)
        model = PeftModel.from_pretrained(base.model, source.path, is_trainable=for_training)
    if not for_training:
        model = model.merge_and_unload()  # plain weights decode faster than the adapter detour
        model.eval()
    tokenizer = base.tokenizer
    if (source.path / "tokenizer_config.json").is_file():
        tokenizer = load_tokenizer(source.path, trust_remote_code=trust_remote_code)
    if base.quantization is not None:
        raise ModelLoadError(
            f"the base model of adapter {source.spec} holds quantized weights; an adapter needs the float base.",
            hint="Point the adapter at the float model and pass --quantize instead.",
        )
    return _describe(model, tokenizer, source, base.runtime, base.model.config, is_adapter=True)


def open_model(
    model: str | None,
    *,
    device: str | None = None,
    dtype: str | None = None,
    threads: int | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    fast: bool = True,
    quantize: str | None = None,
) -> tuple[LoadedModel, float]:
    """Load for inference. Returns the model and the seconds it took to load.

    `quantize` ("int8", "int4"): quantize the linear layers after loading (see gptcli.quantize);
    a folder written by `gptcli quantize` is quantized already and loads as it is."""
    from gptcli.memory import returning_freed_memory
    from gptcli.runtime import resolve_runtime

    started = time.perf_counter()
    runtime = resolve_runtime(device, dtype, threads)
    if quantize is not None:
        from gptcli.quantize import check_device

        check_device(runtime, quantize)
    with returning_freed_memory():
        lm = load_model(model, runtime, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
        if quantize is not None:
            _quantize_loaded(lm, quantize)
        if fast:
            tune_for_inference(lm)
    return lm, time.perf_counter() - started


def tune_for_inference(lm: LoadedModel) -> None:
    """The CPU fast paths open_model applies: fused projections, packed weights, fused activations.

    They copy weights into new layouts, so a change to a weight afterwards is not seen by them:
    change weights first (e.g. on a model opened with fast=False), then call this."""
    from gptcli.cpu_tuning import fuse_activations, optimize_for_inference
    from gptcli.llama_decode import fuse_projections
    from gptcli.memory import release_weight_files
    from gptcli.quantize import run_int8_on_int4_kernel

    fuse_projections(lm.model, lm.runtime)  # before packing: it needs the plain q/k/v and gate/up weights
    run_int8_on_int4_kernel(lm.model, lm.runtime)  # after fusing: the stacked int8 products too
    optimize_for_inference(lm.model, lm.runtime)
    fuse_activations(lm.model)
    if lm.device.type == "cpu":
        release_weight_files(lm.model)  # the packed copies replaced most of what the file held


def _quantize_loaded(lm: LoadedModel, scheme: str) -> None:
    from gptcli.quantize import quantize_model

    if lm.quantization is not None:
        if lm.quantization.scheme != scheme:
            raise UsageError(
                f"{lm.name} holds {lm.quantization.scheme} weights already; it cannot be run as {scheme}.",
                hint=f"Drop --quantize, or quantize the float model to {scheme}.",
            )
        return
    import torch

    with torch.no_grad():
        lm.quantization = quantize_model(lm.model, scheme, lm.runtime.dtype)
