"""`gptcli export --to gguf`: one GGUF file that llama.cpp (and ollama on top of it) runs.

Written with the `gguf` package, the writer llama.cpp's own converter uses, so the tensor
names, layouts and tokenizer keys are the ones llama.cpp reads. What this adds over
llama.cpp's `convert_hf_to_gguf.py`: the byte-level BPE pre-tokenizer is named from the
tokenizer's own description ("gpt-2" for the GPT-2 split regex that `gptcli train` uses)
instead of being recognised by hashing the token ids of a test string, which a newly
trained vocabulary never matches ("BPE pre-tokenizer was not recognized").

Architectures: GPT-2, and the Llama family (Llama, Mistral, Qwen2). Tokenizers: byte-level
BPE (what `gptcli train` makes with --tokenizer-type bpe or bytes, GPT-2's own, and the Qwen2
and Llama 3 split rules).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptcli.errors import GptcliError, ModelLoadError, UsageError

EXPORT_FORMATS = ("gguf",)  # `gptcli export --to`
OUTTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")
ARCHITECTURES = {"gpt2": "gpt2", "llama": "llama", "mistral": "llama", "qwen2": "qwen2"}
# GELU variants that are llama.cpp's (the tanh approximation); others differ in the last digits.
_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


@dataclass
class ExportResult:
    path: Path
    architecture: str
    outtype: str
    tensors: int
    parameters: int
    vocab_size: int
    bytes: int
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def to_record(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "format": "gguf",
            "architecture": self.architecture,
            "outtype": self.outtype,
            "tensors": self.tensors,
            "parameters": self.parameters,
            "vocab_size": self.vocab_size,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
        }


# --------------------------------------------------------------------------- checks


def check_outtype(outtype: str) -> str:
    value = outtype.strip().lower()
    if value not in OUTTYPES:
        raise UsageError(f"--outtype must be one of {', '.join(OUTTYPES)} (got '{outtype}').")
    if value == "q4_0" and not llama_cpp_available():
        raise UsageError(
            "--outtype q4_0 needs llama.cpp's quantizer, and llama-cpp-python is not installed.",
            hint="Export --outtype f16 (or q8_0, written without llama.cpp), then run llama.cpp's "
            "`llama-quantize model-f16.gguf model-q4_0.gguf Q4_0`; or `pip install llama-cpp-python`.",
        )
    return value


def check_target(out: Path, overwrite: bool) -> Path:
    out = Path(out).expanduser()
    if out.is_dir():
        raise UsageError(f"--out '{out}' is a folder; pass a file name such as {out / 'model.gguf'}.")
    if out.exists() and not overwrite:
        raise UsageError(f"'{out}' already exists.", hint="Pass --overwrite to replace it.")
    if not out.parent.is_dir():
        raise UsageError(f"cannot write '{out}': folder '{out.parent}' does not exist.")
    return out


def llama_cpp_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


# --------------------------------------------------------------------------- tokenizer


@dataclass
class Vocab:
    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str
    bos: int | None
    eos: int | None
    pad: int | None
    unk: int | None
    add_bos: bool
    add_eos: bool
    chat_template: str | None


_SUPPORTED_TOKENIZERS = (
    "gptcli exports byte-level BPE tokenizers: GPT-2 style (`gptcli train --tokenizer-type bpe` or `bytes`), "
    "Llama 3 and Qwen2"
)


# Split rules that llama.cpp implements, by the regex a tokenizer.json holds (llama.cpp's
# src/llama-vocab.cpp quotes each original). Llama 3's vocabulary also skips merges for whole
# words already in it (`ignore_merges`), as llama.cpp does for that pre-tokenizer.
_SPLIT_RULES = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": (
        "qwen2",
        False,
    ),
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": (
        "llama-bpe",
        True,
    ),
}


def _pre_tokenizer_name(spec: dict[str, Any], merges: list[Any]) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer, read from its description."""
    pre = spec.get("pre_tokenizer") or {}
    kind = pre.get("type")
    ignore_merges = bool((spec.get("model") or {}).get("ignore_merges"))
    if kind == "ByteLevel" and not ignore_merges:
        if pre.get("add_prefix_space"):
            raise UsageError(
                "this tokenizer adds a space before the text (ByteLevel add_prefix_space), "
                "which llama.cpp's GPT-2 tokenizer does not do.",
                hint=_SUPPORTED_TOKENIZERS + ".",
            )
        if pre.get("use_regex", True) or not merges:
            # Without merges every byte is its own token, so how the text is split first cannot matter.
            return "gpt-2"
    if kind == "Sequence":
        parts = pre.get("pretokenizers") or []
        if (
            len(parts) == 2
            and parts[0].get("type") == "Split"
            and parts[0].get("behavior") == "Isolated"
            and not parts[0].get("invert")
            and parts[1].get("type") == "ByteLevel"
            and not parts[1].get("use_regex", True)
            and not parts[1].get("add_prefix_space")
        ):
            rule = _SPLIT_RULES.get((parts[0].get("pattern") or {}).get("Regex", ""))
            if rule is not None and rule[1] == ignore_merges:
                return rule[0]
    raise UsageError(
        f"cannot export this tokenizer's pre-tokenizer ({kind or 'none'}) to GGUF.",
        hint=_SUPPORTED_TOKENIZERS + "; for other tokenizers use llama.cpp's convert_hf_to_gguf.py.",
    )


def read_vocab(tokenizer: Any, n_vocab: int) -> Vocab:
    """The tokenizer as llama.cpp's "gpt2" (byte-level BPE) vocabulary; UsageError if it is not one."""
    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UsageError("this model's tokenizer is not a `tokenizers` (fast) tokenizer.", hint=_SUPPORTED_TOKENIZERS)
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    kind = model.get("type")
    if kind == "WordLevel":
        raise UsageError(
            "character tokenizers (`gptcli train --tokenizer-type char`) cannot be exported to GGUF: "
            "llama.cpp has no tokenizer that maps unknown characters to one token.",
            hint=_SUPPORTED_TOKENIZERS + ".",
        )
    if kind != "BPE" or model.get("byte_fallback"):
        raise UsageError(f"cannot export a {kind or 'unknown'} tokenizer to GGUF.", hint=_SUPPORTED_TOKENIZERS + ".")
    normalizer = spec.get("normalizer")
    if normalizer and normalizer.get("type") != "NFC":  # NFC changes only text that is not NFC already
        raise UsageError(
            f"cannot export a tokenizer with a normalizer ({spec['normalizer'].get('type')}) to GGUF.",
            hint=_SUPPORTED_TOKENIZERS + ".",
        )
    if (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise UsageError("this BPE tokenizer does not decode byte-level tokens.", hint=_SUPPORTED_TOKENIZERS + ".")
    raw_merges = model.get("merges") or []
    pre = _pre_tokenizer_name(spec, raw_merges)
    merges = [m if isinstance(m, str) else " ".join(m) for m in raw_merges]

    by_id = {int(i): tok for tok, i in backend.get_vocab(with_added_tokens=True).items()}
    if by_id and max(by_id) >= n_vocab:
        raise GptcliError(f"the tokenizer has token id {max(by_id)} but the model's embedding has only {n_vocab} rows.")
    added = {int(a["id"]): a for a in spec.get("added_tokens") or []}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_vocab):
        if i not in by_id:  # embedding rows past the tokenizer (vocabularies padded to a round size)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)

    probe = "Hello"
    with_special = tokenizer(probe)["input_ids"]
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    add_bos = len(with_special) > len(plain) and bos is not None and with_special[0] == bos
    add_eos = len(with_special) > len(plain) and eos is not None and with_special[-1] == eos
    template = getattr(tokenizer, "chat_template", None)
    return Vocab(
        tokens=tokens,
        types=[int(t) for t in types],
        merges=merges,
        pre=pre,
        bos=bos,
        eos=eos,
        pad=tokenizer.pad_token_id,
        unk=tokenizer.unk_token_id,
        add_bos=add_bos,
        add_eos=add_eos,
        chat_template=template if isinstance(template, str) else None,
    )


# --------------------------------------------------------------------------- tensors


def permute_rotary(weight: Any, n_head: int) -> Any:
    """Reorder a q/k projection's output rows from Hugging Face's rotary layout (each head's
    first half rotated with its second half) to llama.cpp's (neighbouring pairs), as
    convert_hf_to_gguf.py does for the "llama" architecture."""
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def unpermute_rotary(weight: Any, n_head: int) -> Any:
    """The inverse of `permute_rotary`."""
    rows = weight.shape[0]
    return weight.reshape(n_head, rows // n_head // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


_GPT2_LAYER = {
    "ln_1": "attn_norm",
    "attn.c_attn": "attn_qkv",
    "attn.c_proj": "attn_output",
    "ln_2": "ffn_norm",
    "mlp.c_fc": "ffn_up",
    "mlp.c_proj": "ffn_down",
}
_LLAMA_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_tensor_name(model_type: str, name: str) -> str | None:
    """The GGUF name of a Hugging Face weight; None for buffers llama.cpp does not need."""
    top = {
        "gpt2": {
            "transformer.wte.weight": "token_embd.weight",
            "transformer.wpe.weight": "position_embd.weight",
            "transformer.ln_f.weight": "output_norm.weight",
            "transformer.ln_f.bias": "output_norm.bias",
            "lm_head.weight": "output.weight",
        },
        "llama": {
            "model.embed_tokens.weight": "token_embd.weight",
            "model.norm.weight": "output_norm.weight",
            "lm_head.weight": "output.weight",
        },
    }
    family = "gpt2" if model_type == "gpt2" else "llama"
    if name in top[family]:
        return top[family][name]
    prefix = "transformer.h." if family == "gpt2" else "model.layers."
    layer_names = _GPT2_LAYER if family == "gpt2" else _LLAMA_LAYER
    if name.startswith(prefix):
        index, _, rest = name[len(prefix) :].partition(".")
        part, _, suffix = rest.rpartition(".")
        if part in layer_names and suffix in ("weight", "bias"):
            return f"blk.{index}.{layer_names[part]}.{suffix}"
        if family == "gpt2" and rest in ("attn.bias", "attn.masked_bias"):
            return None  # the causal mask, a buffer
    if name.endswith("rotary_emb.inv_freq"):
        return None
    return ""  # unknown: the caller refuses the model rather than drop a weight


def _gguf_tensors(model: Any, model_type: str) -> list[tuple[str, Any]]:
    """(GGUF name, float32 numpy array in Hugging Face layout) for every weight llama.cpp reads."""
    config = model.config
    tied = _is_tied(model)
    out: list[tuple[str, Any]] = []
    for name, tensor in model.state_dict().items():
        target = gguf_tensor_name(model_type, name)
        if target is None or (target == "output.weight" and tied):
            continue
        if target == "":
            raise UsageError(
                f"cannot export weight '{name}': it has no place in llama.cpp's {ARCHITECTURES[model_type]} model."
            )
        data = tensor.detach().float().cpu().numpy()
        if (
            model_type == "gpt2"
            and target.endswith(".weight")
            and data.ndim == 2
            and not target.startswith(("token_embd", "position_embd", "output."))
        ):
            data = data.T  # GPT-2's Conv1D stores (in, out); llama.cpp wants (out, in) like a Linear
        elif ARCHITECTURES[model_type] == "llama" and target.endswith(("attn_q.weight", "attn_q.bias")):
            data = permute_rotary(data, config.num_attention_heads)
        elif ARCHITECTURES[model_type] == "llama" and target.endswith(("attn_k.weight", "attn_k.bias")):
            data = permute_rotary(data, _kv_heads(config))
        out.append((target, data.copy(order="C") if not data.flags["C_CONTIGUOUS"] else data))
    return out


def _is_tied(model: Any) -> bool:
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    return head is not None and head.weight.data_ptr() == embed.weight.data_ptr()


def _kv_heads(config: Any) -> int:
    return int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)


def _head_dim(config: Any) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def _quant_type(name: str, data: Any, outtype: str) -> Any:
    """The GGML type of one tensor, by the rules of llama.cpp's converter: vectors and norms in
    float32, GPT-2's position table in float32, every other matrix in the requested type."""
    from gguf import GGMLQuantizationType as Q

    if outtype == "f32" or data.ndim <= 1 or name.endswith("_norm.weight") or name.startswith("position_embd"):
        return Q.F32
    return {"f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}[outtype]


# --------------------------------------------------------------------------- metadata


def _rope_theta(config: Any) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    theta = params.get("rope_theta") if isinstance(params, dict) else None
    return float(theta if theta is not None else getattr(config, "rope_theta", 10000.0))


def _rope_scaling(config: Any) -> tuple[str, float | None]:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if not isinstance(params, dict):
        return "default", None
    kind = params.get("rope_type") or params.get("type") or "default"
    return str(kind), params.get("factor")


def check_config(config: Any) -> list[str]:
    """Refuse what llama.cpp would compute differently; returns warnings for small differences."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UsageError(
            f"cannot export a '{model_type}' model to GGUF.",
            hint=f"gptcli exports {', '.join(ARCHITECTURES)} models; for others use llama.cpp's convert_hf_to_gguf.py.",
        )
    warnings: list[str] = []
    if model_type == "gpt2":
        if getattr(config, "scale_attn_by_inverse_layer_idx", False):
            raise UsageError("cannot export a GPT-2 model with scale_attn_by_inverse_layer_idx: llama.cpp lacks it.")
        if not getattr(config, "scale_attn_weights", True):
            raise UsageError("cannot export a GPT-2 model without scale_attn_weights: llama.cpp always scales.")
        act = getattr(config, "activation_function", "gelu_new")
        if act == "gelu":
            warnings.append(
                "this model uses exact GELU; llama.cpp computes GPT-2's GELU with the tanh approximation, "
                "so its logits differ in the last digits."
            )
        elif act not in _TANH_GELU:
            raise UsageError(f"cannot export a GPT-2 model with activation '{act}': llama.cpp's GPT-2 uses GELU.")
    else:
        act = getattr(config, "hidden_act", "silu")
        if act != "silu":
            raise UsageError(
                f"cannot export a {model_type} model with activation '{act}': llama.cpp uses SwiGLU (silu)."
            )
        kind, factor = _rope_scaling(config)
        if kind not in ("default", "linear") or (kind == "linear" and factor is None):
            raise UsageError(
                f"cannot export rotary scaling '{kind}' yet.",
                hint="Use llama.cpp's convert_hf_to_gguf.py for this model.",
            )
    return warnings


def _write_metadata(writer: Any, config: Any, vocab: Vocab, outtype: str, name: str, n_vocab: int) -> None:
    import gguf

    model_type = config.model_type
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    if model_type == "gpt2":
        writer.add_context_length(int(config.n_positions))
        writer.add_embedding_length(int(config.n_embd))
        writer.add_feed_forward_length(int(config.n_inner or 4 * config.n_embd))
        writer.add_block_count(int(config.n_layer))
        writer.add_head_count(int(config.n_head))
        writer.add_layer_norm_eps(float(config.layer_norm_epsilon))
    else:
        writer.add_vocab_size(n_vocab)
        writer.add_context_length(int(config.max_position_embeddings))
        writer.add_embedding_length(int(config.hidden_size))
        writer.add_feed_forward_length(int(config.intermediate_size))
        writer.add_block_count(int(config.num_hidden_layers))
        writer.add_head_count(int(config.num_attention_heads))
        writer.add_head_count_kv(_kv_heads(config))
        writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        writer.add_rope_freq_base(_rope_theta(config))
        writer.add_rope_dimension_count(_head_dim(config))
        if _head_dim(config) * int(config.num_attention_heads) != int(config.hidden_size):
            writer.add_key_length(_head_dim(config))
            writer.add_value_length(_head_dim(config))
        kind, factor = _rope_scaling(config)
        if kind == "linear" and factor is not None:
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(factor))
    file_type = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[outtype]
    writer.add_file_type(int(file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    for value, add in (
        (vocab.bos, writer.add_bos_token_id),
        (vocab.eos, writer.add_eos_token_id),
        (vocab.pad, writer.add_pad_token_id),
        (vocab.unk, writer.add_unk_token_id),
    ):
        if value is not None:
            add(int(value))
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


# --------------------------------------------------------------------------- export


def _write_gguf(path: Path, model: Any, vocab: Vocab, outtype: str, name: str) -> tuple[int, int]:
    """Write the GGUF file at `path`; returns (tensors, parameters)."""
    import gguf

    config = model.config
    tensors = _gguf_tensors(model, config.model_type)
    n_vocab = model.get_input_embeddings().weight.shape[0]
    writer = gguf.GGUFWriter(path=None, arch=ARCHITECTURES[config.model_type])
    try:
        _write_metadata(writer, config, vocab, outtype, name, n_vocab)
        parameters = 0
        for tname, data in tensors:
            qtype = _quant_type(tname, data, outtype)
            try:
                packed = gguf.quants.quantize(data, qtype)
            except gguf.QuantError:  # rows not a multiple of the block size: as llama.cpp's converter, f16
                qtype = gguf.GGMLQuantizationType.F16
                packed = gguf.quants.quantize(data, qtype)
            writer.add_tensor(tname, packed, raw_dtype=qtype)
            parameters += int(data.size)
        writer.write_header_to_file(path=path)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()  # also when a write fails: the caller removes the file
    return len(tensors), parameters


def _load(spec: str | None, allow_pickle: bool, trust_remote_code: bool) -> tuple[Any, Any, str]:
    """The model (float32, CPU) and tokenizer, with the config and tokenizer checked before any
    weight is read when the folder is a plain model."""
    from gptcli.loading import load_config, load_model, load_tokenizer, resolve_source
    from gptcli.runtime import resolve_runtime

    source = resolve_source(spec, allow_pickle=allow_pickle)
    if not (source.path / "adapter_config.json").is_file():
        config = load_config(source.path, trust_remote_code=trust_remote_code)
        check_config(config)
        tokenizer = load_tokenizer(source.path, trust_remote_code=trust_remote_code)
        vocab_rows = int(getattr(config, "vocab_size", 0) or len(tokenizer))
        read_vocab(tokenizer, max(vocab_rows, len(tokenizer)))
    runtime = resolve_runtime("cpu", "float32", None)
    lm = load_model(spec, runtime, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    name = source.path.name if source.kind == "folder" else source.spec
    return lm.model, lm.tokenizer, name


def export_gguf(
    spec: str | None,
    out: Path,
    outtype: str = "f16",
    *,
    overwrite: bool = False,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    threads: int | None = None,
) -> ExportResult:
    """Export the model `spec` (anything --model accepts) to the GGUF file `out`, whole or not at all."""
    from gptcli.fileio import AtomicFile

    started = time.perf_counter()
    outtype = check_outtype(outtype)
    out = check_target(out, overwrite)
    model, tokenizer, name = _load(spec, allow_pickle, trust_remote_code)
    warnings = check_config(model.config)
    n_vocab = int(model.get_input_embeddings().weight.shape[0])
    vocab = read_vocab(tokenizer, n_vocab)
    try:
        with AtomicFile(out) as atomic:
            # The writer opens the temporary file by name; AtomicFile flushes it to disk and renames
            # it over `out` when the block ends, or deletes it if anything here raises.
            if outtype == "q4_0":
                with _scratch_file(out) as source:
                    tensors, parameters = _write_gguf(source, model, vocab, "f32", name)
                    quantize_q4_0(source, atomic.tmp, threads)
            else:
                tensors, parameters = _write_gguf(atomic.tmp, model, vocab, outtype, name)
    except OSError as exc:  # a full disk, a file system that refuses the write
        raise GptcliError(f"cannot write '{out}': {exc.strerror or exc}.") from exc
    return ExportResult(
        path=out,
        architecture=ARCHITECTURES[model.config.model_type],
        outtype=outtype,
        tensors=tensors,
        parameters=parameters,
        vocab_size=n_vocab,
        bytes=out.stat().st_size,
        seconds=time.perf_counter() - started,
        warnings=warnings,
    )


class _scratch_file:
    """A temporary file beside `target` (same file system, no copy through /tmp), always removed."""

    def __init__(self, target: Path):
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".f32.tmp", dir=target.parent)
        os.close(fd)
        self.path = Path(name)

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc: object) -> None:
        try:
            self.path.unlink()
        except OSError:
            pass


def quantize_q4_0(source: Path, target: Path, threads: int | None = None) -> None:
    """Quantize a GGUF file to Q4_0 with llama.cpp's own quantizer (llama-cpp-python)."""
    import ctypes

    try:
        import llama_cpp
    except ImportError as exc:  # checked up front by check_outtype; a broken install lands here
        raise ModelLoadError(f"cannot load llama-cpp-python for Q4_0: {exc}") from exc
    _silence_llama_cpp(llama_cpp)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    params.nthread = threads or 0
    rc = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if rc != 0:
        raise GptcliError(f"llama.cpp's quantizer failed (code {rc}) on {source}.")


_LOG_CALLBACK: Any = None


def _silence_llama_cpp(llama_cpp: Any) -> None:
    """llama.cpp logs every tensor it touches to stderr; gptcli's stderr is for its own notes."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is None:
        _LOG_CALLBACK = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
        llama_cpp.llama_log_set(_LOG_CALLBACK, None)
