"""Quantized weights: int8/int4 layers match the dequantized float model, `gptcli quantize`
folders reload to the same logits, and --quantize works on every inference command."""

from __future__ import annotations

import json

import pytest

THREADS = {"GPTCLI_THREADS": "1"}


def _open(folder, quantize=None, fast=True):
    from gptcli.loading import open_model

    return open_model(str(folder), device="cpu", dtype="float32", quantize=quantize, fast=fast)[0]


class _Dequantized:
    """A float32 layer computing what a quantized one stands for: dequantize(quantize(w)), with the
    input rounded to bfloat16 and the product rounded to bfloat16 before the bias, as the
    kernels do (`quantize.kernel_dtype`); only the order of the float32 sums differs."""

    @staticmethod
    def build(weight, bias):
        import torch

        class Layer(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.register_buffer("w", weight)
                self.register_buffer("b", bias)

            def forward(self, x):
                y = torch.nn.functional.linear(x.bfloat16().float(), self.w).bfloat16().float()
                return y if self.b is None else y + self.b

        return Layer()


def _dequantized_reference(folder, scheme):
    """The float32 model whose quantized layers are _Dequantized: what int8/int4 stands for."""
    import torch

    from gptcli import quantize as q
    from gptcli.loading import tune_for_inference

    lm = _open(folder, fast=False)  # the fast paths copy weights: change them first
    with torch.no_grad():
        p = q.plan(lm.model, scheme)
        for t in p.targets:
            w = q.dequantize(q.quantize_weight(t.weight, scheme))
            bias = None if t.bias is None else t.bias.detach().float().clone()
            setattr(t.parent, t.attr, _Dequantized.build(w, bias))
        if p.tied_embedding:  # the input embedding reads the head's dequantized rows
            head = lm.model.get_output_embeddings()
            lm.model.get_input_embeddings().weight = torch.nn.Parameter(head.w.clone(), requires_grad=False)
    tune_for_inference(lm)
    return lm


def _greedy(lm, prompts, n=12, batch_size=1):
    from gptcli.generation import Completion, Request, stream_generate
    from gptcli.sampling import SamplingParams

    reqs = [Request(p, SamplingParams(greedy=True, max_new_tokens=n)) for p in prompts]
    done = [e for e in stream_generate(lm, reqs, batch_size=batch_size) if isinstance(e, Completion)]
    return [e.token_ids for e in sorted(done, key=lambda e: e.request)]


def _logits(lm, text="Once upon a time there was a dog"):
    import torch

    ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return lm.model(ids).logits


PROMPTS = ["Once upon a time", "Max liked to run", "The sun"]


@pytest.mark.parametrize("scheme", ["int8", "int4"])
@pytest.mark.parametrize("arch", ["gpt2", "llama", "llama-wide"])
def test_greedy_output_equals_the_dequantized_model(arch, scheme, gpt2_dir, llama_dir, tmp_path):
    import torch
    from tiny import build_model

    from gptcli.lean_decode import decode_forward

    folder = {"gpt2": gpt2_dir, "llama": llama_dir}.get(arch) or build_model(tmp_path / arch, arch)
    quant, ref = _open(folder, scheme), _dequantized_reference(folder, scheme)
    assert quant.quantization.layers == (9 if arch == "gpt2" else 15)  # every linear layer, the head included
    # Quantized GPT-2 and Llama blocks decode through a lean forward too (Llama's q/k/v and gate/up
    # fused into one quantized product each; int4 fuses only whole 64-row blocks, which the narrow
    # Llama lacks).
    lean = arch in ("gpt2", "llama-wide") or (arch == "llama" and scheme == "int8")
    assert (decode_forward(quant.model) is not None) == lean
    got, expected = _logits(quant), _logits(ref)
    if scheme == "int4":
        assert torch.equal(got, expected)
    else:  # the int8 planes sum in another order: at most a bfloat16 step or two of the logits apart
        assert (got - expected).abs().max().item() <= 2**-5
    want = _greedy(ref, PROMPTS)
    assert _greedy(quant, PROMPTS) == want
    assert _greedy(quant, PROMPTS, batch_size=3) == want  # batched (left-padded) rows too
    # and it really is a different model from the float one
    assert not torch.allclose(_logits(quant), _logits(_open(folder)), atol=1e-4)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_float32_layers_run_the_kernels_in_bfloat16_and_hand_back_float32(scheme, dtype):
    """PyTorch's quantized CPU kernels are vectorized for bfloat16 inputs only (float32 and float16
    inputs ran 15-64x slower, slower than the float layer itself): such a model's quantized layer
    rounds its input to bfloat16 and returns the model's dtype, bias added in that dtype."""
    import torch

    from gptcli import quantize as q

    dt = getattr(torch, dtype)
    torch.manual_seed(0)
    w, b = torch.randn(48, 256), torch.randn(48)
    tensors = q.quantize_weight(w, scheme)
    layer = q.make_linear(tensors, b, dt)
    x = torch.randn(3, 256).to(dt)
    y = layer(x)
    assert y.dtype == dt and y.shape == (3, 48)
    kernel_inputs = layer.scales if scheme == "int8" else layer.scales_zeros
    assert kernel_inputs.dtype == torch.bfloat16
    product = torch.nn.functional.linear(x.bfloat16().float(), q.dequantize(tensors)).bfloat16()
    want = product.to(dt) + b.to(dt)
    if scheme == "int4" and dt == torch.float32:
        assert torch.equal(y, want)
    else:
        torch.testing.assert_close(y, want, rtol=2**-7, atol=1e-3)


@pytest.mark.parametrize("scheme, bound", [("int8", 0.5 / 127), ("int4", 0.5 / 15)])
def test_rounding_error_is_at_most_half_a_step(scheme, bound):
    import torch

    from gptcli import quantize as q

    w = torch.randn(48, 256) * torch.linspace(0.01, 3, 48)[:, None]  # rows of very different scales
    tensors = q.quantize_weight(w, scheme)
    err = (q.dequantize(tensors) - w).abs()
    if scheme == "int8":
        assert tensors["qweight"].dtype == torch.int8 and tensors["qweight"].shape == (48, 256)
        span = w.abs().amax(dim=1, keepdim=True) * 2
    else:
        assert tensors["qweight"].dtype == torch.uint8 and tensors["qweight"].shape == (48, 128)
        assert tensors["scales"].shape == (48, 256 // q.INT4_GROUP_SIZE)
        g = w.reshape(48, -1, q.INT4_GROUP_SIZE)
        span = (g.amax(-1) - g.amin(-1)).repeat_interleave(q.INT4_GROUP_SIZE, dim=1)
    # half a quantization step, plus the bfloat16 rounding of scales and zero points
    assert bool((err <= span * bound * 1.02 + 1e-6).all())


def test_head_with_rows_not_a_multiple_of_16_and_tied_embedding(gpt2_dir):
    # The tiny vocabulary (300) is padded for the int4 kernel; the tied input embedding reads the
    # head's quantized rows instead of keeping a float copy.
    lm = _open(gpt2_dir, "int4")
    head = lm.model.get_output_embeddings()
    assert head.out_features == lm.model.config.vocab_size and head.out_features % 16 != 0
    assert type(lm.model.get_input_embeddings()).__name__ == "TiedQuantEmbedding"
    assert _logits(lm).shape[-1] == lm.model.config.vocab_size


# --------------------------------------------------------------------------- gptcli quantize


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, gpt2_dir, llama_dir):
    """`gptcli quantize` folders, made once through the CLI."""
    from gptcli.cli.app import run

    made = {}
    for arch, folder in (("gpt2", gpt2_dir), ("llama", llama_dir)):
        for scheme in ("int8", "int4"):
            out = tmp_path_factory.mktemp("q") / f"{arch}-{scheme}"
            assert run(["quantize", str(folder), "--to", scheme, "--out", str(out)]) == 0
            made[arch, scheme] = out
    return made


@pytest.mark.parametrize("scheme", ["int8", "int4"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_quantized_folder_reloads_to_identical_logits(arch, scheme, quantized, gpt2_dir, llama_dir):
    import torch
    from safetensors import safe_open

    folder = quantized[arch, scheme]
    config = json.loads((folder / "config.json").read_text())
    qcfg = config["quantization_config"]
    assert qcfg["quant_method"] == "gptcli" and qcfg["bits"] == (8 if scheme == "int8" else 4)
    assert qcfg["group_size"] == (None if scheme == "int8" else 64)
    assert qcfg["modules_not_quantized"] == (["transformer.wpe"] if arch == "gpt2" else ["model.embed_tokens"])
    assert (folder / "tokenizer.json").is_file()
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        head = "lm_head"
        assert f.get_tensor(f"{head}.qweight").dtype == (torch.int8 if scheme == "int8" else torch.uint8)
    assert f"{head}.weight" not in keys and f"{head}.scales" in keys
    assert ("transformer.wte.weight" in keys) is False if arch == "gpt2" else "model.embed_tokens.weight" in keys

    loaded = _open(folder)  # no --quantize: the folder says what it is
    assert loaded.quantization is not None and loaded.quantization.scheme == scheme
    fresh = _open(gpt2_dir if arch == "gpt2" else llama_dir, scheme)
    assert torch.equal(_logits(loaded), _logits(fresh))
    assert _greedy(loaded, PROMPTS[:1]) == _greedy(fresh, PROMPTS[:1])
    assert _open(folder, scheme).quantization.scheme == scheme  # the same --quantize again is fine


def test_quantized_folder_refuses_another_scheme_and_training(cli, quantized, tmp_path):
    r = cli("generate", "hi", "-m", quantized["gpt2", "int8"], "--quantize", "int4", "-t", "2", env=THREADS)
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.startswith("Error: ") and "int8 weights already" in r.stderr
    data = tmp_path / "d.txt"
    data.write_text("Once upon a time there was a dog.\n" * 20)
    r = cli("finetune", data, "--model", quantized["gpt2", "int8"], "--out", tmp_path / "ft", "--steps", "1")
    assert r.exit_code != 0 and "quantized weights" in r.stderr and "Traceback" not in r.stderr


def test_quantize_refuses_a_non_empty_out_and_overwrite_replaces_a_model(cli, gpt2_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    r = cli("quantize", gpt2_dir, "--to", "int8", "--out", out)
    assert r.exit_code == 2 and "not empty" in r.stderr and r.stdout == ""
    r = cli("quantize", gpt2_dir, "--to", "int8", "--out", out, "--overwrite")
    assert r.exit_code == 2 and "no config.json" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # untouched

    model = tmp_path / "model"
    assert cli("quantize", gpt2_dir, "--to", "int8", "--out", model).exit_code == 0
    r = cli("quantize", gpt2_dir, "--to", "int4", "--out", model, "--overwrite", "--json")
    assert r.exit_code == 0, r.stderr
    rec = json.loads(r.stdout)
    assert rec["bits"] == 4 and rec["layers"] == 9 and rec["bytes"] < rec["float32_bytes"] / 3
    assert json.loads((model / "config.json").read_text())["quantization_config"]["bits"] == 4


def test_quantize_failure_leaves_no_folder(cli, gpt2_dir, tmp_path, monkeypatch):
    import safetensors.torch

    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    r = cli("quantize", gpt2_dir, "--to", "int4", "--out", tmp_path / "out")
    assert r.exit_code == 1 and r.stderr.startswith("Error: ") and "No space left" in r.stderr
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its temporary build


@pytest.mark.parametrize(
    "args, words",
    [
        (["--out", "x"], "--to is required"),
        (["--to", "int8"], "--out is required"),
        (["--to", "int2", "--out", "x"], "unknown --to value 'int2'"),
        (["--to", "int8", "--out", "x", "--group-size", "64"], "int4 only"),
        (["--to", "int4", "--out", "x", "--group-size", "48"], "32, 64, 128 or 256"),
    ],
)
def test_quantize_usage_errors(cli, gpt2_dir, tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    r = cli("quantize", gpt2_dir, *args)
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.startswith("Error: ") and words in r.stderr
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- --quantize on the commands


def test_generate_quantize_json_stats_and_env(cli, llama_dir):
    r = cli("generate", "Once upon a time", "-m", llama_dir, "--quantize", "int4", "--greedy", "-t", "6", "--json")
    assert r.exit_code == 0, r.stderr
    (rec,) = r.json_lines()
    assert rec["completion_tokens"] == 6 and {"text", "finish_reason", "prompt_tokens", "model"} <= rec.keys()
    ref = _greedy(_dequantized_reference(llama_dir, "int4"), ["Once upon a time"], n=6)[0]
    tok = _open(llama_dir).tokenizer
    assert rec["text"] == tok.decode(ref)
    # the env var, sampling flags and several prompts in a batch; --stats says what was loaded
    r = cli(
        "generate",
        "-m",
        llama_dir,
        "--file",
        "-",
        "-t",
        "5",
        "--temperature",
        "0.9",
        "--top-k",
        "20",
        "--top-p",
        "0.9",
        "--min-p",
        "0.05",
        "--repetition-penalty",
        "1.2",
        "-n",
        "2",
        "--seed",
        "3",
        "--stats",
        "--json",
        stdin="one\ntwo\n",
        env={"GPTCLI_QUANTIZE": "int8", **THREADS},
    )
    assert r.exit_code == 0, r.stderr
    assert len(r.json_lines()) == 4 and all(rec["completion_tokens"] == 5 for rec in r.json_lines())
    assert "int8 weights (15 layers)" in r.stderr.splitlines()[0]


def test_chat_quantized_reuses_its_cache(cli, gpt2_dir):
    stdin = '{"content": "Who is Max?"}\n{"content": "And Tom?"}\n'
    r = cli("chat", "--jsonl", "--json", "-m", gpt2_dir, "--quantize", "int8", "--greedy", "-t", "4", stdin=stdin)
    assert r.exit_code == 0, r.stderr
    first, second = r.json_lines()
    assert first["completion_tokens"] == 4 and second["cached_tokens"] > 0


def test_eval_quantized_scores_close_to_float(cli, llama_dir, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("Once upon a time there was a little dog named Max. The sun was warm.\n")
    scores = {}
    for q in ("", "int8", "int4"):
        extra = ["--quantize", q] if q else []
        r = cli("eval", text, "-m", llama_dir, "--json", "--dtype", "float32", *extra, env=THREADS)
        assert r.exit_code == 0, r.stderr
        (rec,) = r.json_lines()
        scores[q] = rec
    assert scores["int8"]["tokens"] == scores[""]["tokens"]
    assert scores["int8"]["nll"] != scores[""]["nll"]
    assert abs(scores["int8"]["nll"] - scores[""]["nll"]) < 0.05 * scores[""]["nll"]


def test_translate_quantized(cli, marian_dir):
    plain = cli("translate", "--to", "fr", "-m", marian_dir, "--json", stdin="Hello world.\n", env=THREADS)
    quant = cli(
        "translate", "--to", "fr", "-m", marian_dir, "--json", "--quantize", "int8", stdin="Hello world.\n", env=THREADS
    )
    assert plain.exit_code == 0 and quant.exit_code == 0, quant.stderr
    assert plain.json_lines()[0].keys() == quant.json_lines()[0].keys()


@pytest.mark.parametrize("command", ["generate", "chat", "translate", "eval"])
def test_bad_quantize_value_is_one_error_line(cli, tmp_path, command):
    extra = ["--to", "fr"] if command == "translate" else []
    r = cli(command, *extra, "--quantize", "int3", "-m", tmp_path / "no-model", stdin="hello\n")
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.splitlines() == ["Error: unknown --quantize value 'int3'. Use one of: int8, int4."]
    r = cli(command, *extra, "-m", tmp_path / "no-model", stdin="hello\n", env={"GPTCLI_QUANTIZE": "fp4"})
    assert r.exit_code == 2 and "unknown --quantize value 'fp4'" in r.stderr


def test_gpu_runs_are_refused_with_a_clear_error():
    import torch

    from gptcli.errors import UsageError
    from gptcli.quantize import check_device
    from gptcli.runtime import Runtime

    with pytest.raises(UsageError, match="CPU only") as info:
        check_device(Runtime(torch.device("cuda", 0), torch.bfloat16), "int4")
    assert "--device cpu" in (info.value.hint or "")
    check_device(Runtime(torch.device("cpu"), torch.bfloat16), "int4")  # no error on the CPU


def test_weights_read_from_a_folder_are_aligned_for_the_int8_kernel(tmp_path):
    """A tensor's bytes start wherever the file put them; the int8 kernel faulted (segfault) on a
    misaligned weight for inputs of 4+ rows in bfloat16, so a quantized folder crashed on prompts."""
    import torch
    from safetensors.torch import save_file

    from gptcli.quantize import _read_tensors, make_linear, quantize_int8

    torch.manual_seed(0)
    weight = torch.randn(96, 64)
    q = quantize_int8(weight)
    # An odd-sized int8 tensor first: the int8 weight after it starts at an odd offset in the file.
    save_file(
        {"a": torch.zeros(3, dtype=torch.int8), "b.qweight": q["qweight"], "b.scales": q["scales"].bfloat16()},
        str(tmp_path / "model.safetensors"),
    )
    where = dict.fromkeys(["a", "b.qweight", "b.scales"], tmp_path / "model.safetensors")
    read = _read_tensors(where, list(where))
    assert all(t.data_ptr() % 64 == 0 for t in read.values())
    layer = make_linear({"qweight": read["b.qweight"], "scales": read["b.scales"]}, None, torch.bfloat16)
    x = torch.randn(2, 8, 64, dtype=torch.bfloat16)
    expected = x.float() @ (q["qweight"].float() * q["scales"].bfloat16().float()[:, None]).t()
    torch.testing.assert_close(layer(x).float(), expected, rtol=0.02, atol=0.05)


@pytest.mark.parametrize("shape", [(96, 64), (50, 128), (40, 96)])
def test_int8_on_the_int4_kernel_matches_the_int8_kernel(shape):
    """bfloat16 int8 layers run as two 4-bit planes through the int4 kernel: the same products as
    `_weight_int8pack_mm` up to the order of the float32 sum (rows not a multiple of 16 padded and cut)."""
    import torch

    from gptcli.quantize import int8_planes, make_linear, quantize_int8

    torch.manual_seed(0)
    n, k = shape
    layer = make_linear(quantize_int8(torch.randn(n, k)), torch.randn(n), torch.bfloat16)
    planes = int8_planes(layer)
    assert planes is not None
    for rows in (1, 5):
        x = torch.randn(2, rows, k, dtype=torch.bfloat16)
        want, got = layer(x), planes(x)
        assert got.shape == want.shape == (2, rows, n)
        torch.testing.assert_close(got.float(), want.float(), rtol=0.01, atol=0.02)
    # the same bytes as int8, plus the second plane's scales: nothing is stored twice
    wide = make_linear(quantize_int8(torch.randn(256, 512)), None, torch.bfloat16)
    assert int8_planes(wide).weight_bytes() <= 1.05 * wide.weight_bytes()


def test_int8_layers_are_freed_one_by_one_as_their_planes_replace_them(monkeypatch):
    """Swapping int8 layers for planes never holds both forms of the model: when a layer's planes
    are built, every layer swapped before it is already gone (a ~1 B model: 2.5 GB -> 1.6 GB peak)."""
    import gc
    import weakref
    from types import SimpleNamespace

    import torch

    from gptcli import quantize

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        *[quantize.make_linear(quantize.quantize_int8(torch.randn(64, 64)), None, torch.bfloat16) for _ in range(4)]
    )
    swapped: list = []
    alive_at_each: list[int] = []
    build = quantize.int8_planes

    def watched(module):
        gc.collect()
        alive_at_each.append(sum(ref() is not None for ref in swapped))
        swapped.append(weakref.ref(module))
        return build(module)

    monkeypatch.setattr(quantize, "int8_planes", watched)
    runtime = SimpleNamespace(device=torch.device("cpu"), dtype=torch.bfloat16)
    assert quantize.run_int8_on_int4_kernel(model, runtime) == 4
    assert alive_at_each == [0, 0, 0, 0]
    assert [type(m).__name__ for m in model] == ["Int8Planes"] * 4


def test_bfloat16_int8_models_use_the_int4_kernel_with_the_int8_kernels_logits(gpt2_dir, llama_dir):
    """In bfloat16 every int8 layer but a tied head runs on the int4 kernel, the lean forward takes
    them, and the logits are the int8 kernel's up to float32 summation order."""

    from gptcli.lean_decode import decode_forward
    from gptcli.loading import open_model

    for folder in (gpt2_dir, llama_dir):
        lm = open_model(str(folder), device="cpu", dtype="bfloat16", quantize="int8")[0]
        kinds = [type(m).__name__ for m in lm.model.modules()]
        assert "Int8Planes" in kinds and kinds.count("Int8Linear") == (1 if folder == gpt2_dir else 0)
        assert decode_forward(lm.model) is not None
        plain = open_model(str(folder), device="cpu", dtype="bfloat16", quantize="int8", fast=False)[0]
        assert "Int8Planes" not in {type(m).__name__ for m in plain.model.modules()}
        got, want = _logits(lm).float(), _logits(plain).float()
        assert (got - want).abs().max().item() <= 0.02 * want.abs().max().item()
