"""Weight-only quantization of a model's linear layers: int8 per channel, int4 per group.

Decoding one token streams every weight from memory once, so fewer bytes per weight is
fewer milliseconds per token. The matrix products run in PyTorch's own CPU kernels
(`aten._weight_int8pack_mm`, `aten._weight_int4pack_mm_for_cpu`); activations stay in the
model's dtype (bfloat16 where the CPU has it natively, else float32).

Schemes (the portable form is what `gptcli quantize` writes; see docs/quantize.md):

- int8: symmetric per output channel. `qweight` int8 [out, in], `scales` [out];
  w = qweight * scale.
- int4: asymmetric per group of `group_size` inputs. `qweight` uint8 [out, in/2] holding two
  4-bit values per byte (low nibble: even input column), `scales` and `zeros` [out, in/group];
  w = (q - 8) * scale + zero, the formula of the int4 kernel. The kernel's own packed layout is
  CPU-specific, so it is built at load time, never stored.

Scales and zeros are rounded to bfloat16 before the integers are computed from them, so a
model quantized on the fly and one loaded from a quantized folder hold the same numbers,
whatever the activation dtype.

Every `nn.Linear` and GPT-2 `Conv1D` is quantized, the output head included (the largest
single product per token). A head tied to the input embedding also serves the embedding
lookups from its quantized rows, so the float copy is dropped; an untied input embedding
stays in float (a lookup reads one row per token: quantizing it saves memory, not time).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gptcli.errors import UsageError

SCHEMES = ("int8", "int4")
QUANT_METHOD = "gptcli"
# Inputs per int4 group: the middle of what the kernel takes. Smaller groups follow the weights
# more closely and store more scale bytes (64: 12.5% on top of the 4-bit values; docs/quantize.md).
INT4_GROUP_SIZE = 64
_INT4_GROUPS = (256, 128, 64, 32)  # the kernel's group sizes; a layer uses the largest <= the chosen one
_INT4_N_MULTIPLE = 16  # the int4 packing wants output rows in multiples of 16: the head is padded
_INT4_BLOCK_ROWS = 64  # ...and interleaves the rows of each block of 64


def kernel_dtype(dtype: Any) -> Any:
    """The activation dtype the quantized kernels run in for a model computing in `dtype`.

    PyTorch's int8 and int4 CPU kernels are vectorized for bfloat16 inputs only. Fed float32,
    they were 15x (int8) and 30x (int4) slower here, slower than the float32 layer they replace;
    fed float16, 26x and 64x. So a float32 or float16 model's quantized layers round their input
    to bfloat16, multiply with float32 sums, and hand back the model's dtype. The rest of the model
    keeps its dtype."""
    import torch

    return torch.bfloat16 if dtype in (torch.float32, torch.float16) else dtype


def parse_scheme(value: str | None, *, flag: str = "--quantize") -> str | None:
    """Check the spelling of --quantize (never imports torch); None or "none" means off."""
    import os

    if value is None:
        value = os.environ.get("GPTCLI_QUANTIZE") or None
    if value is None:
        return None
    spec = value.strip().lower()
    if spec in ("", "none", "off"):
        return None
    if spec not in SCHEMES:
        raise UsageError(f"unknown {flag} value '{value}'.", hint=f"Use one of: {', '.join(SCHEMES)}.")
    return spec


def bits_of(scheme: str) -> int:
    return 8 if scheme == "int8" else 4


# ---------------------------------------------------------------------- the math


def quantize_int8(weight: Any) -> dict[str, Any]:
    """[out, in] float weight -> {"qweight": int8 [out, in], "scales": bf16 [out]}."""
    import torch

    qs, scales = [], []
    for rows in _row_chunks(weight):
        w = rows.detach().float()
        scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12).to(torch.bfloat16)
        qs.append(torch.round(w / scale.float()[:, None]).clamp(-127, 127).to(torch.int8))
        scales.append(scale)
    return {"qweight": torch.cat(qs).contiguous(), "scales": torch.cat(scales).contiguous()}


# Rows quantized (or packed) at a time: a float32 copy of a whole head (GPT-2: 50257x768) would
# add ~150 MB to the peak memory of loading.
_CHUNK_ROWS = 4096


def _row_chunks(t: Any):
    for start in range(0, t.shape[0], _CHUNK_ROWS):
        yield t[start : start + _CHUNK_ROWS]


def group_size_for(in_features: int, group_size: int) -> int | None:
    """The int4 group size a layer with `in_features` inputs uses (None: it cannot be quantized)."""
    for g in _INT4_GROUPS:
        if g <= group_size and in_features % g == 0:
            return g
    return None


def quantize_int4(weight: Any, group_size: int) -> dict[str, Any]:
    """[out, in] float weight -> {"qweight": uint8 [out, in/2], "scales", "zeros": bf16 [out, in/group]}."""
    import torch

    parts: dict[str, list[Any]] = {"qweight": [], "scales": [], "zeros": []}
    for rows in _row_chunks(weight):
        w = rows.detach().float()
        n, k = w.shape
        wg = w.reshape(n, k // group_size, group_size)
        lo, hi = wg.amin(dim=-1), wg.amax(dim=-1)
        scale = ((hi - lo) / 15).clamp(min=1e-12).to(torch.bfloat16)
        zero = (lo + 8 * scale.float()).to(torch.bfloat16)
        q = torch.round((wg - zero.float()[..., None]) / scale.float()[..., None] + 8).clamp(0, 15).to(torch.uint8)
        q = q.reshape(n, k)
        parts["qweight"].append(q[:, 0::2] | (q[:, 1::2] << 4))
        parts["scales"].append(scale)
        parts["zeros"].append(zero)
    return {k: torch.cat(v).contiguous() for k, v in parts.items()}


def unpack_int4(qweight: Any) -> Any:
    """uint8 [out, in/2] -> uint8 values 0..15 [out, in]."""
    import torch

    return torch.stack((qweight & 0xF, qweight >> 4), dim=-1).reshape(qweight.shape[0], -1)


def dequantize(tensors: dict[str, Any]) -> Any:
    """The float32 [out, in] weight a portable quantized form stands for."""
    q = tensors["qweight"]
    if "zeros" not in tensors:
        return q.float() * tensors["scales"].float()[:, None]
    values = unpack_int4(q).float()
    n, k = values.shape
    groups = tensors["scales"].shape[1]
    scale = tensors["scales"].float()[..., None]
    zero = tensors["zeros"].float()[..., None]
    return ((values.reshape(n, groups, k // groups) - 8) * scale + zero).reshape(n, k)


def quantize_weight(weight: Any, scheme: str, group_size: int = INT4_GROUP_SIZE) -> dict[str, Any] | None:
    """The portable form of one [out, in] weight, or None when the scheme cannot take its shape."""
    if scheme == "int8":
        return quantize_int8(weight)
    g = group_size_for(weight.shape[1], group_size)
    return None if g is None else quantize_int4(weight, g)


# ---------------------------------------------------------------------- modules


def _modules():
    """The module classes, built on first use so importing this file never imports torch."""
    global _MODULES
    if _MODULES is not None:
        return _MODULES
    import torch

    class Int8Linear(torch.nn.Module):
        """y = x W^T + b with W int8 per output channel (`aten._weight_int8pack_mm`)."""

        bits = 8

        def __init__(self, tensors: dict[str, Any], bias: Any | None, dtype: Any):
            super().__init__()
            q = tensors["qweight"]
            self.out_features, self.in_features = q.shape
            self.dtype = dtype  # the model's: what comes in and goes out
            scales = tensors["scales"].to(kernel_dtype(dtype)).contiguous()
            self.register_buffer("qweight", q.contiguous(), persistent=False)
            self.register_buffer("scales", scales, persistent=False)
            self.register_buffer("bias", None if bias is None else bias.detach().to(dtype), persistent=False)

        def forward(self, x):
            shape = x.shape[:-1]
            x2 = x.reshape(-1, self.in_features)
            if x2.dtype != self.scales.dtype:
                x2 = x2.to(self.scales.dtype)
            y = torch.ops.aten._weight_int8pack_mm(x2.contiguous(), self.qweight, self.scales)
            if y.dtype != x.dtype:
                y = y.to(x.dtype)
            if self.bias is not None:
                y = y + self.bias
            return y.reshape(*shape, self.out_features)

        def embed(self, ids):
            """Rows of the weight as an embedding table (a head tied to the input embedding)."""
            return self.qweight[ids].to(self.dtype) * self.scales[ids].to(self.dtype).unsqueeze(-1)

        def weight_bytes(self) -> int:
            return _nbytes(self.qweight) + _nbytes(self.scales)

    class Int4Linear(torch.nn.Module):
        """y = x W^T + b with W int4 per group of inputs (`aten._weight_int4pack_mm_for_cpu`).

        Holds the kernel's packed layout (`packed`, rows padded to a multiple of 16) and
        `scales_zeros` [groups, rows, 2]; `_int4_linear` builds one from the portable form."""

        bits = 4

        def __init__(
            self, packed: Any, scales_zeros: Any, bias: Any | None, out_features: int, dtype: Any, rows: Any = None
        ):
            super().__init__()
            self.out_features, self.in_features = out_features, packed.shape[1] * 2
            self.group_size = self.in_features // scales_zeros.shape[0]
            self.dtype = dtype  # the model's: what comes in and goes out (scales_zeros: the kernel's)
            self.register_buffer("packed", packed, persistent=False)
            self.register_buffer("scales_zeros", scales_zeros, persistent=False)
            self.register_buffer("bias", bias, persistent=False)
            # A tied head keeps the portable rows for embedding lookups (the packed layout has no rows).
            self.rows = rows
            self.padded = packed.shape[0] - out_features

        def forward(self, x):
            y = self._product(x.reshape(-1, self.in_features).contiguous())
            return y.reshape(*x.shape[:-1], self.out_features)

        def _product(self, x2):
            wanted = x2.dtype
            if wanted != self.scales_zeros.dtype:
                x2 = x2.to(self.scales_zeros.dtype)
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, self.group_size, self.scales_zeros)
            if self.padded:
                y = y[:, : self.out_features]
            if y.dtype != wanted:
                y = y.to(wanted)
            if self.bias is not None:
                y = y + self.bias
            return y

        def embed(self, ids):
            assert self.rows is not None
            rows = {k: v[ids.reshape(-1)] for k, v in self.rows.items()}
            return dequantize(rows).to(self.dtype).reshape(*ids.shape, self.in_features)

        def weight_bytes(self) -> int:
            extra = sum(_nbytes(v) for v in self.rows.values()) if self.rows else 0
            return _nbytes(self.packed) + _nbytes(self.scales_zeros) + extra

    class TiedQuantEmbedding(torch.nn.Module):
        """An input embedding that reads its rows from the quantized output head it is tied to."""

        def __init__(self, head: torch.nn.Module, padding_idx: int | None = None):
            super().__init__()
            self.head = [head]  # a list: not a submodule, so it is neither counted nor saved twice
            self.num_embeddings, self.embedding_dim = head.out_features, head.in_features
            self.padding_idx = padding_idx

        @property
        def weight(self):
            # transformers reads `.weight.dtype`/`.device` of input embeddings; give it the head's
            # dequantized table only when something really needs the tensor.
            raise AttributeError("a quantized embedding has no float weight")

        def forward(self, ids):
            return self.head[0].embed(ids)

    class Int8Planes(Int4Linear):
        """An int8 layer run by the int4 kernel, which reads its bytes faster at one row.

        W = 16·hi + lo, hi in [-8, 7] and lo in [0, 15]: one int4 product of the input taken twice,
        [x, x], against [hi | lo] with the group scales 16·s and s (lo's +8 as its group zero).
        The bytes read are int8's; the kernel sums both halves in float32 and rounds once, so the
        result is the int8 kernel's up to the order of the sum. bfloat16 inputs only (`int8_planes`)."""

        bits = 8

        def __init__(self, packed: Any, scales_zeros: Any, bias: Any | None, out_features: int, dtype: Any):
            super().__init__(packed, scales_zeros, bias, out_features, dtype)
            self.in_features = packed.shape[1]  # the kernel's input is twice this

        def forward(self, x):
            x2 = x.reshape(-1, self.in_features)
            y = self._product(torch.cat((x2, x2), dim=1))
            return y.reshape(*x.shape[:-1], self.out_features)

    _MODULES = (Int8Linear, Int4Linear, TiedQuantEmbedding, Int8Planes)
    return _MODULES


_MODULES: tuple | None = None


def _nbytes(t: Any) -> int:
    return int(t.numel() * t.element_size())


def make_linear(tensors: dict[str, Any], bias: Any | None, dtype: Any, keep_rows: bool = False) -> Any:
    Int8Linear, _, _, _ = _modules()
    if "zeros" in tensors:
        return _int4_linear(tensors, bias, dtype, keep_rows=keep_rows)
    return Int8Linear(tensors, bias, dtype)


def _int4_linear(tensors: dict[str, Any], bias: Any | None, dtype: Any, keep_rows: bool) -> Any:
    """An Int4Linear from the portable form: the kernel's packed layout is built here."""
    import torch

    _, Int4Linear, _, _ = _modules()
    q, scales, zeros = tensors["qweight"], tensors["scales"], tensors["zeros"]
    n, half = q.shape
    pad = -n % _INT4_N_MULTIPLE
    sz = torch.stack((scales, zeros), dim=-1)  # [out, groups, 2]
    if pad:
        q = torch.cat((q, q.new_full((pad, half), 0x88)))  # 8: zero after the -8 offset
        sz = torch.cat((sz, sz.new_zeros(pad, *sz.shape[1:])))
    packed = _pack_int4(q, unpack_int4)
    rows = {k: v.contiguous() for k, v in tensors.items()} if keep_rows else None
    bias = None if bias is None else bias.detach().to(dtype)
    return Int4Linear(packed, sz.transpose(0, 1).to(kernel_dtype(dtype)).contiguous(), bias, n, dtype, rows=rows)


def _pack_int4(rows: Any, codes: Any) -> Any:
    """The int4 kernel's packed layout of `codes(chunk)` (int values 0..15, one per weight) for the
    rows of `rows`. Built per chunk of rows (4096: whole blocks of _INT4_BLOCK_ROWS): the int32
    values the packing takes would otherwise be 4 bytes per weight for a whole head."""
    import torch

    return torch.cat(
        [
            torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes(chunk).to(torch.int32), 1)
            for chunk in _row_chunks(rows)
        ]
    )


def stacked_bias(modules: list[Any]) -> Any | None:
    """The biases of layers stacked along their outputs (zeros for a layer without one); None
    when no layer has a bias."""
    import torch

    if all(m.bias is None for m in modules):
        return None
    dtype = next(m.bias.dtype for m in modules if m.bias is not None)
    return torch.cat(
        [m.bias.detach() if m.bias is not None else torch.zeros(m.out_features, dtype=dtype) for m in modules]
    )


def concat_linears(modules: list[Any]) -> Any | None:
    """One quantized layer whose output is the given layers' outputs side by side (layers of one
    input, such as q/k/v): one kernel call streams them all. None when they cannot be joined
    (different schemes or group sizes, an int4 layer with padded rows, a tied head's rows)."""
    import torch

    Int8Linear, Int4Linear, _, _ = _modules()
    kind = type(modules[0])
    if kind not in (Int8Linear, Int4Linear) or any(type(m) is not kind for m in modules):
        return None
    if len({m.in_features for m in modules}) != 1:
        return None
    first = modules[0]
    bias = stacked_bias(modules)
    if kind is Int8Linear:
        qweight = torch.cat([m.qweight for m in modules])
        scales = torch.cat([m.scales for m in modules])
        return Int8Linear({"qweight": qweight, "scales": scales}, bias, first.dtype)
    if any(m.padded or m.rows is not None or m.group_size != first.group_size for m in modules):
        return None
    # The packed layout interleaves rows within blocks of 64: layers stack when every one but
    # the last fills whole blocks.
    if any(m.out_features % _INT4_BLOCK_ROWS for m in modules[:-1]):
        return None
    packed = torch.cat([m.packed for m in modules])
    scales_zeros = torch.cat([m.scales_zeros for m in modules], dim=1)
    return Int4Linear(packed, scales_zeros, bias, packed.shape[0], first.dtype)


def int8_planes(module: Any) -> Any | None:
    """`module` (an Int8Linear) as an Int8Planes layer; None when its inputs fit no int4 group size."""
    import torch

    _, _, _, Int8Planes = _modules()
    n, k = module.out_features, module.in_features
    group = group_size_for(k, max(_INT4_GROUPS))
    if group is None:
        return None
    q, scales = module.qweight, module.scales
    pad = -n % _INT4_N_MULTIPLE
    if pad:  # zero rows with zero scales: their outputs are cut off
        q = torch.cat((q, q.new_zeros(pad, k)))
        scales = torch.cat((scales, scales.new_zeros(pad)))

    def planes(rows: Any) -> Any:  # [rows, 2k] in 0..15: hi + 8, then lo
        # In int8 (an arithmetic shift is the floor of q / 16, the low nibble q - 16 * hi); one
        # int32 copy at the end, which the packing takes: the fewest temporary bytes while loading.
        return torch.cat(((rows >> 4) + 8, rows & 15), dim=1).to(torch.int32)

    groups = k // group
    high_sz = torch.stack((16 * scales, torch.zeros_like(scales)), dim=-1)
    low_sz = torch.stack((scales, 8 * scales), dim=-1)
    scales_zeros = torch.cat((high_sz.expand(groups, -1, -1), low_sz.expand(groups, -1, -1))).contiguous()
    return Int8Planes(_pack_int4(q, planes), scales_zeros, module.bias, n, module.dtype)


def run_int8_on_int4_kernel(model: Any, runtime: Any) -> int:
    """Swap the int8 layers of a CPU model whose kernels run in bfloat16 (`kernel_dtype`) for
    Int8Planes (not a head whose rows serve a tied embedding). Returns how many were swapped. At
    one row the int4 kernel read the same bytes 1.2-1.4x faster than `_weight_int8pack_mm`
    (docs/quantize.md)."""
    import torch

    if runtime.device.type != "cpu" or kernel_dtype(runtime.dtype) != torch.bfloat16:
        return 0
    Int8Linear, _, TiedQuantEmbedding, _ = _modules()
    tied_heads = {id(m.head[0]) for m in model.modules() if isinstance(m, TiedQuantEmbedding)}
    swaps = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is Int8Linear and id(child) not in tied_heads
    ]
    from gptcli.memory import drop_file_pages

    done = 0
    with torch.no_grad():
        while swaps:  # popped one by one: each int8 copy is freed as soon as its planes replace it
            parent, name, child = swaps.pop()
            planes = int8_planes(child)
            if planes is not None:
                setattr(parent, name, planes)
                drop_file_pages(child.qweight, model)  # a quantized folder's int8 bytes, now copied
                done += 1
    return done


# ---------------------------------------------------------------------- whole models


@dataclass
class Target:
    """One layer to quantize: where it sits, its [out, in] weight and its bias."""

    name: str  # dotted module name, e.g. "transformer.h.0.attn.c_attn"
    parent: Any
    attr: str
    weight: Any  # [out, in]
    bias: Any | None


@dataclass
class Plan:
    targets: list[Target]
    skipped: list[str]  # linear layers the scheme cannot take (int4: inputs not a multiple of 32)
    tied_embedding: str | None  # input embedding tied to the head, served by the quantized head
    head: str | None  # dotted name of the output head


def plan(model: Any, scheme: str, group_size: int = INT4_GROUP_SIZE) -> Plan:
    import torch
    from transformers.pytorch_utils import Conv1D

    head_module = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embed_module = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = (
        head_module is not None
        and embed_module is not None
        and isinstance(embed_module, torch.nn.Embedding)
        and getattr(head_module, "weight", None) is not None
        and head_module.weight is embed_module.weight
    )
    targets, skipped = [], []
    head_name = tied_name = None
    for name, module in model.named_modules():
        if module is head_module:
            head_name = name
        if tied and module is embed_module:
            tied_name = name
        for attr, child in module.named_children():
            full = f"{name}.{attr}" if name else attr
            if type(child) is torch.nn.Linear:
                weight = child.weight
            elif type(child) is Conv1D:  # GPT-2 keeps (in, out); the kernels want (out, in)
                weight = child.weight.t()
            else:
                continue
            if weight.dim() != 2:
                continue
            if scheme == "int4" and group_size_for(weight.shape[1], group_size) is None:
                skipped.append(full)
                continue
            targets.append(Target(full, module, attr, weight, child.bias))
    if head_name is None or head_name not in {t.name for t in targets}:
        tied_name = None
    return Plan(targets, skipped, tied_name, head_name)


@dataclass
class QuantReport:
    scheme: str
    layers: int = 0
    float_bytes: int = 0  # bytes of the replaced float weights
    quant_bytes: int = 0  # bytes of what replaced them
    not_quantized: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.scheme} weights ({self.layers} layers)"


def check_device(runtime: Any, scheme: str, folder: Any = None) -> None:
    """The kernels are CPU kernels: say so instead of failing inside a matmul on a GPU."""
    if runtime.device.type == "cpu":
        return
    what = f"--quantize {scheme}" if folder is None else f"the {scheme} weights of {folder}"
    raise UsageError(
        f"{what} run on the CPU only (PyTorch's weight-only GPU kernels use other layouts); "
        f"this run would use {runtime.device}.",
        hint="Add --device cpu"
        + (", or run the float model on the GPU without --quantize." if folder is None else "."),
    )


def quantize_model(model: Any, scheme: str, dtype: Any, group_size: int = INT4_GROUP_SIZE) -> QuantReport:
    """Replace the model's linear layers with quantized ones, in place."""
    import torch

    from gptcli.memory import drop_file_pages

    p = plan(model, scheme, group_size)
    report = QuantReport(scheme)
    with torch.no_grad():
        for t in p.targets:
            tensors = quantize_weight(t.weight, scheme, group_size)
            assert tensors is not None  # plan() left out what the scheme cannot take
            module = make_linear(tensors, t.bias, dtype, keep_rows=t.name == p.head and p.tied_embedding is not None)
            setattr(t.parent, t.attr, module)
            drop_file_pages(t.weight, model)
            report.layers += 1
            report.float_bytes += t.weight.numel() * t.weight.element_size()
            report.quant_bytes += module.weight_bytes()
        if p.tied_embedding is not None:
            _tie_embedding(model, p)
    report.not_quantized = not_quantized(model, p)
    return report


def _tie_embedding(model: Any, p: Plan) -> None:
    _, _, TiedQuantEmbedding, _ = _modules()
    assert p.head is not None and p.tied_embedding is not None
    head = model.get_submodule(p.head)
    old = model.get_submodule(p.tied_embedding)
    parent_name, _, attr = p.tied_embedding.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, TiedQuantEmbedding(head, getattr(old, "padding_idx", None)))


def not_quantized(model: Any, p: Plan) -> list[str]:
    """Weight-holding modules left in float: embeddings (unless tied to the head) and skipped layers."""
    import torch

    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Embedding) and n != p.tied_embedding]
    return names + p.skipped


# ---------------------------------------------------------------------- quantized folders

WEIGHTS_FILE = "model.safetensors"
# Files of a model folder that `gptcli quantize` does not copy: it writes its own weights and config.
_NOT_COPIED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".gguf")
_NOT_COPIED_NAMES = {"config.json", "model.safetensors.index.json", "adapter_config.json"}


def quantization_config(raw_config: dict) -> dict | None:
    """The `quantization_config` of a folder `gptcli quantize` wrote, else None."""
    qcfg = raw_config.get("quantization_config")
    if isinstance(qcfg, dict) and qcfg.get("quant_method") == QUANT_METHOD:
        return qcfg
    return None


def scheme_of(qcfg: dict) -> str:
    return "int8" if qcfg.get("bits") == 8 else "int4"


def quantized_tensors(model: Any, scheme: str, group_size: int = INT4_GROUP_SIZE) -> tuple[dict[str, Any], dict]:
    """Every tensor of the quantized folder (portable forms + the float rest) and its config entry."""
    import torch

    p = plan(model, scheme, group_size)
    out: dict[str, Any] = {}
    replaced = set()
    with torch.no_grad():
        for t in p.targets:
            tensors = quantize_weight(t.weight, scheme, group_size)
            assert tensors is not None
            for key, value in tensors.items():
                out[f"{t.name}.{key}"] = value
            replaced.add(f"{t.name}.weight")
            if t.bias is not None:
                out[f"{t.name}.bias"] = t.bias.detach().contiguous()
                replaced.add(f"{t.name}.bias")
        if p.tied_embedding is not None:
            replaced.add(f"{p.tied_embedding}.weight")
        for key, value in model.state_dict().items():
            if key not in replaced and key not in out:
                out[key] = value.detach().clone().contiguous()  # clone: tied tensors cannot share storage
    qcfg = {
        "quant_method": QUANT_METHOD,
        "bits": bits_of(scheme),
        "group_size": group_size if scheme == "int4" else None,
        "modules_not_quantized": not_quantized(model, p),
        "tied_embedding": p.tied_embedding,
    }
    return out, qcfg


def write_quantized(lm: Any, scheme: str, out: Any, group_size: int = INT4_GROUP_SIZE) -> QuantReport:
    """Write the quantized folder `out` for the loaded float model `lm` (atomic: whole or nothing)."""
    import json
    import os
    import shutil
    from pathlib import Path

    from safetensors.torch import save_file

    from gptcli.fileio import default_mode, publish_folder

    model = lm.model
    tensors, qcfg = quantized_tensors(model, scheme, group_size)
    report = QuantReport(scheme, layers=sum(1 for k in tensors if k.endswith(".qweight")))
    report.not_quantized = qcfg["modules_not_quantized"]
    report.quant_bytes = sum(v.numel() * v.element_size() for k, v in tensors.items())
    report.float_bytes = sum(v.numel() * v.element_size() for v in model.state_dict().values())

    def build(tmp: Path) -> None:
        source = Path(lm.path)
        for item in sorted(source.iterdir()):
            if item.is_file() and item.suffix not in _NOT_COPIED_SUFFIXES and item.name not in _NOT_COPIED_NAMES:
                shutil.copy2(item, tmp / item.name)
        if not (tmp / "tokenizer_config.json").exists():
            lm.tokenizer.save_pretrained(tmp)  # an adapter folder keeps its tokenizer with its base
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        config["quantization_config"] = qcfg
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if not (tmp / "generation_config.json").exists() and getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "gptcli_quantization": scheme})
        os.chmod(tmp / WEIGHTS_FILE, default_mode())  # safetensors creates it private (0600)

    publish_folder(Path(out), build)
    return report


def load_quantized(folder: Any, config: Any, qcfg: dict, runtime: Any, *, auto_class: Any, trust_remote_code: bool):
    """Build the model of a quantized folder without ever holding its float weights."""
    import torch
    from accelerate import init_empty_weights

    from gptcli.errors import ModelLoadError

    scheme = scheme_of(qcfg)
    check_device(runtime, scheme, folder)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")  # ours, not a transformers quantizer's
    # Parameters are created on the meta device (no memory); buffers computed at construction
    # (rotary frequencies, attention masks) stay real.
    with init_empty_weights(include_buffers=False):
        model = auto_class.from_config(config, dtype=runtime.dtype, trust_remote_code=trust_remote_code)
    where = _tensor_files(folder)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_name = next((n for n, m in model.named_modules() if m is head), None)
    tied = qcfg.get("tied_embedding")
    layers = sorted(k[: -len(".qweight")] for k in where if k.endswith(".qweight"))
    report = QuantReport(scheme)
    try:
        for name in layers:
            # One layer at a time: its portable tensors are freed once its kernel layout is built,
            # so the load never holds the file's int4 rows and the packed layout together.
            keys = [f"{name}.{k}" for k in ("qweight", "scales", "zeros", "bias") if f"{name}.{k}" in where]
            read = _read_tensors(where, keys)
            parts = {k.rpartition(".")[2]: v for k, v in read.items() if not k.endswith(".bias")}
            bias = read.get(f"{name}.bias")
            for key in keys:
                del where[key]
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            getattr(parent, attr)  # raises AttributeError for a layer this architecture does not have
            module = make_linear(parts, bias, runtime.dtype, keep_rows=bool(tied) and name == head_name)
            setattr(parent, attr, module)
            report.layers += 1
            report.quant_bytes += module.weight_bytes()
        if tied:
            _tie_embedding(model, Plan([], [], tied, head_name))
    except (AttributeError, KeyError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the quantized model in {folder}: {exc}") from exc
    tensors = _read_tensors(where, list(where))
    floats = {k: v.to(runtime.dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    _, unexpected = model.load_state_dict(floats, strict=False, assign=True)
    missing = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if missing or unexpected:
        what = f"no weights for {', '.join(missing[:3])}" if missing else f"unknown weights {', '.join(unexpected[:3])}"
        raise ModelLoadError(f"cannot load the quantized model in {folder}: {what}.")
    if (folder / "generation_config.json").is_file():
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(folder)
    report.not_quantized = list(qcfg.get("modules_not_quantized") or [])
    model.eval()
    return model.to(torch.device("cpu")), report


_ALIGNMENT = 64


def _tensor_files(folder: Any) -> dict[str, Any]:
    """Tensor name -> the safetensors file holding it, for every file of the folder."""
    from safetensors import safe_open

    where = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            where.update(dict.fromkeys(f.keys(), path))
    return where


def _read_tensors(where: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """The named tensors, copied out of their files. Each file is mapped only while it is read:
    pages of a mapping count in the process's memory for as long as the mapping stays open."""
    from safetensors import safe_open

    out = {}
    for path in dict.fromkeys(where[k] for k in keys):
        with safe_open(str(path), framework="pt") as f:
            out.update({k: _aligned(f.get_tensor(k)) for k in keys if where[k] == path})
    return out


def _aligned(t: Any) -> Any:
    """`t` in memory aligned as PyTorch's own allocations are (64 bytes). A tensor read from a file
    starts wherever the file put it; the int8 kernel's vector loads fault on a misaligned weight
    (seen for prompts of 4+ tokens in bfloat16)."""
    return t.clone() if t.data_ptr() % _ALIGNMENT else t
