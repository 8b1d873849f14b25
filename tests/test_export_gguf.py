"""`gptcli export --to gguf`: the file read back with the `gguf` package (always), and run in
llama.cpp beside gptcli (only where llama-cpp-python is installed: skipped in CI)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tiny import CORPUS, EOT

gguf = pytest.importorskip("gguf")


def _export(cli, model, out: Path, *extra: str):
    return cli("export", str(model), "--to", "gguf", "--out", str(out), *extra)


def _field(reader, key: str):
    return reader.fields[key].contents()


def _tensors(reader) -> dict:
    return {t.name: t for t in reader.tensors}


def _as_hf(t) -> np.ndarray:
    """A GGUF tensor as float32 in Hugging Face's (out, in) layout (GGUF lists dimensions reversed)."""
    shape = [int(d) for d in reversed(t.shape)]
    return gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape)


def _hf_model(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype="float32")


def _tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


# --------------------------------------------------------------------------- the file, read back


def test_gpt2_f32_reads_back_with_weights_tokenizer_and_metadata(cli, gpt2_dir, tmp_path):
    out = tmp_path / "gpt2.gguf"
    r = _export(cli, gpt2_dir, out, "--outtype", "f32", "--json")
    assert r.exit_code == 0, r.stderr
    record = json.loads(r.stdout)
    assert record["path"] == str(out) and record["architecture"] == "gpt2" and record["outtype"] == "f32"
    assert record["bytes"] == out.stat().st_size

    reader = gguf.GGUFReader(out)
    model, tok = _hf_model(gpt2_dir), _tokenizer(gpt2_dir)
    cfg = model.config
    assert _field(reader, "general.architecture") == "gpt2"
    assert _field(reader, "gpt2.block_count") == cfg.n_layer
    assert _field(reader, "gpt2.context_length") == cfg.n_positions
    assert _field(reader, "gpt2.embedding_length") == cfg.n_embd
    assert _field(reader, "gpt2.attention.head_count") == cfg.n_head

    tensors = _tensors(reader)
    # embeddings, position table, final norm (2) and 12 per block; the head is tied to the embedding
    assert len(tensors) == 4 + 12 * cfg.n_layer == record["tensors"]
    assert "output.weight" not in tensors
    assert {t.tensor_type for t in tensors.values()} == {gguf.GGMLQuantizationType.F32}
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    np.testing.assert_array_equal(_as_hf(tensors["token_embd.weight"]), sd["transformer.wte.weight"])
    np.testing.assert_array_equal(_as_hf(tensors["position_embd.weight"]), sd["transformer.wpe.weight"])
    # Conv1D weights are stored (in, out) by transformers and (out, in) in GGUF
    np.testing.assert_array_equal(_as_hf(tensors["blk.1.attn_qkv.weight"]), sd["transformer.h.1.attn.c_attn.weight"].T)
    np.testing.assert_array_equal(_as_hf(tensors["blk.0.ffn_down.weight"]), sd["transformer.h.0.mlp.c_proj.weight"].T)
    np.testing.assert_array_equal(_as_hf(tensors["blk.1.attn_qkv.bias"]), sd["transformer.h.1.attn.c_attn.bias"])
    np.testing.assert_array_equal(_as_hf(tensors["output_norm.bias"]), sd["transformer.ln_f.bias"])

    # the tokenizer, as llama.cpp's byte-level BPE reads it, with the pre-tokenizer named
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    assert _field(reader, "tokenizer.ggml.pre") == "gpt-2"
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == cfg.vocab_size
    assert tokens == [tok.convert_ids_to_tokens(i) for i in range(len(tok))]
    eot = tok.convert_tokens_to_ids(EOT)
    types = _field(reader, "tokenizer.ggml.token_type")
    assert types[eot] == gguf.TokenType.CONTROL and types[eot + 1] == gguf.TokenType.NORMAL
    spec = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec]
    assert _field(reader, "tokenizer.ggml.merges") == merges and merges
    assert _field(reader, "tokenizer.ggml.eos_token_id") == eot
    assert _field(reader, "tokenizer.ggml.bos_token_id") == eot
    assert _field(reader, "tokenizer.ggml.add_bos_token") is False  # gptcli's prompts start without one


def test_llama_f32_round_trips_rotary_permuted_q_and_k(cli, llama_dir, tmp_path):
    from gptcli.export_gguf import unpermute_rotary

    out = tmp_path / "llama.gguf"
    r = _export(cli, llama_dir, out, "--outtype", "f32")
    assert r.exit_code == 0, r.stderr
    assert str(out) in r.stdout and "llama" in r.stdout

    reader = gguf.GGUFReader(out)
    model = _hf_model(llama_dir)
    cfg = model.config
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "llama.attention.head_count") == cfg.num_attention_heads
    assert _field(reader, "llama.attention.head_count_kv") == cfg.num_key_value_heads == 1
    assert _field(reader, "llama.rope.dimension_count") == cfg.hidden_size // cfg.num_attention_heads
    assert _field(reader, "llama.vocab_size") == cfg.vocab_size
    assert _field(reader, "tokenizer.ggml.pre") == "gpt-2"

    tensors = _tensors(reader)
    tied = cfg.tie_word_embeddings
    assert len(tensors) == 2 + (0 if tied else 1) + 9 * cfg.num_hidden_layers
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    for i in range(cfg.num_hidden_layers):
        q = _as_hf(tensors[f"blk.{i}.attn_q.weight"])
        k = _as_hf(tensors[f"blk.{i}.attn_k.weight"])
        assert k.shape == sd[f"model.layers.{i}.self_attn.k_proj.weight"].shape  # grouped-query: 1 kv head
        np.testing.assert_array_equal(
            unpermute_rotary(q, cfg.num_attention_heads), sd[f"model.layers.{i}.self_attn.q_proj.weight"]
        )
        np.testing.assert_array_equal(unpermute_rotary(k, 1), sd[f"model.layers.{i}.self_attn.k_proj.weight"])
        assert not np.array_equal(q, sd[f"model.layers.{i}.self_attn.q_proj.weight"])  # it was reordered
        np.testing.assert_array_equal(
            _as_hf(tensors[f"blk.{i}.ffn_gate.weight"]), sd[f"model.layers.{i}.mlp.gate_proj.weight"]
        )
        np.testing.assert_array_equal(
            _as_hf(tensors[f"blk.{i}.attn_v.weight"]), sd[f"model.layers.{i}.self_attn.v_proj.weight"]
        )
    np.testing.assert_array_equal(_as_hf(tensors["output_norm.weight"]), sd["model.norm.weight"])


def _rope_pairs(x: np.ndarray, positions: np.ndarray, base: float) -> np.ndarray:
    """llama.cpp's rotary embedding for the "llama" architecture: neighbouring values (2i, 2i+1) of
    each head rotate together by position * base^(-2i/d). x: (positions, heads, d)."""
    d = x.shape[-1]
    angle = positions[:, None] * base ** (-np.arange(0, d, 2) / d)[None, :]  # (positions, d/2)
    cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out


def test_llama_attention_scores_in_llama_cpp_rotary_layout_equal_transformers(cli, llama_dir, tmp_path):
    """The exported q/k weights, rotated as llama.cpp rotates them, give transformers' attention scores."""
    import torch
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    out = tmp_path / "llama.gguf"
    assert _export(cli, llama_dir, out, "--outtype", "f32").exit_code == 0
    tensors = _tensors(gguf.GGUFReader(out))
    model = _hf_model(llama_dir)
    cfg = model.config
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    d = cfg.hidden_size // heads
    attn = model.model.layers[1].self_attn
    x = torch.randn(7, cfg.hidden_size, generator=torch.Generator().manual_seed(0))
    positions = torch.arange(7) + 3

    # transformers: q, k per head, rotated half with half, one kv head shared by all query heads
    with torch.no_grad():
        q = attn.q_proj(x).view(7, heads, d).transpose(0, 1)[None]
        k = attn.k_proj(x).view(7, kv_heads, d).transpose(0, 1)[None]
        cos, sin = LlamaRotaryEmbedding(cfg)(x[None], positions[None])
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        ours = torch.einsum("hqd,hkd->hqk", q[0], k[0].repeat_interleave(heads // kv_heads, 0)).numpy()

    # llama.cpp: the exported weights, neighbouring pairs rotated
    xs = x.numpy()
    q2 = (xs @ _as_hf(tensors["blk.1.attn_q.weight"]).T).reshape(7, heads, d)
    k2 = (xs @ _as_hf(tensors["blk.1.attn_k.weight"]).T).reshape(7, kv_heads, d)
    base = float(_field(gguf.GGUFReader(out), "llama.rope.freq_base"))
    q2, k2 = _rope_pairs(q2, positions.numpy(), base), _rope_pairs(k2, positions.numpy(), base)
    theirs = np.einsum("qhd,khd->hqk", q2, np.repeat(k2, heads // kv_heads, axis=1))
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-3)


def test_qwen2_keeps_rotary_order_and_biases_untied_head_is_written(cli, gpt2_dir, tmp_path):
    from transformers import AutoModelForCausalLM, Qwen2Config

    folder = tmp_path / "qwen2"
    config = Qwen2Config(
        vocab_size=320,  # more rows than the tokenizer: the rest are written as unused tokens
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    _tokenizer(gpt2_dir).save_pretrained(folder)
    out = tmp_path / "qwen2.gguf"
    r = _export(cli, folder, out, "--outtype", "f32")
    assert r.exit_code == 0, r.stderr
    reader = gguf.GGUFReader(out)
    assert _field(reader, "general.architecture") == "qwen2"
    # transformers loads a Qwen2 folder's tokenizer with Qwen2's split rule, and so does llama.cpp
    assert _field(reader, "tokenizer.ggml.pre") == "qwen2"
    tensors = _tensors(reader)
    sd = {k: v.numpy() for k, v in _hf_model(folder).state_dict().items()}
    # Qwen2 rotates halves in llama.cpp too (NeoX style): q and k are stored as they are
    np.testing.assert_array_equal(_as_hf(tensors["blk.0.attn_q.weight"]), sd["model.layers.0.self_attn.q_proj.weight"])
    np.testing.assert_array_equal(_as_hf(tensors["blk.0.attn_k.bias"]), sd["model.layers.0.self_attn.k_proj.bias"])
    np.testing.assert_array_equal(_as_hf(tensors["output.weight"]), sd["lm_head.weight"])
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    n_tok = len(_tokenizer(gpt2_dir))
    assert len(tokens) == 320 and tokens[-1] == "[PAD319]"
    assert set(types[n_tok:]) == {gguf.TokenType.UNUSED} and gguf.TokenType.UNUSED not in types[:n_tok]


@pytest.mark.filterwarnings("ignore::FutureWarning")  # peft's own deprecation notices while building the adapter
def test_lora_adapter_folder_exports_merged_weights(cli, llama_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    base = _hf_model(llama_dir)
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["v_proj"], init_lora_weights=False))
    adapter = tmp_path / "adapter"
    lora.save_pretrained(adapter)  # records llama_dir as its base
    with torch.no_grad():
        merged = lora.merge_and_unload().state_dict()["model.layers.0.self_attn.v_proj.weight"].numpy()
    out = tmp_path / "lora.gguf"
    r = _export(cli, adapter, out, "--outtype", "f32")
    assert r.exit_code == 0 and r.stderr == "", r.stderr
    exported = _as_hf(_tensors(gguf.GGUFReader(out))["blk.0.attn_v.weight"])
    np.testing.assert_allclose(exported, merged, rtol=1e-6, atol=1e-6)
    assert not np.allclose(exported, _hf_model(llama_dir).state_dict()["model.layers.0.self_attn.v_proj.weight"])


@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0"])
def test_outtypes_store_matrices_in_that_type_and_vectors_in_f32(cli, llama_dir, tmp_path, outtype):
    out = tmp_path / f"m-{outtype}.gguf"
    r = _export(cli, llama_dir, out, "--outtype", outtype)
    assert r.exit_code == 0, r.stderr
    tensors = _tensors(gguf.GGUFReader(out))
    want = {"f16": "F16", "bf16": "BF16", "q8_0": "Q8_0"}[outtype]
    for name, t in tensors.items():
        expected = "F32" if name.endswith("norm.weight") else want
        assert t.tensor_type.name == expected, name
    sd = {k: v.numpy() for k, v in _hf_model(llama_dir).state_dict().items()}
    up = sd["model.layers.0.mlp.up_proj.weight"]
    # 8-bit blocks of 32 with a float16 scale: within half a step of the largest value in the block
    tolerance = {"f16": 1e-3, "bf16": 1e-2, "q8_0": 1e-2}[outtype] * np.abs(up).max()
    np.testing.assert_allclose(_as_hf(tensors["blk.0.ffn_up.weight"]), up, atol=tolerance)


def test_bytes_tokenizer_exports_char_tokenizer_is_refused(cli, tmp_path):
    from transformers import AutoModelForCausalLM, GPT2Config

    from gptcli.training.tokenizer import build_bytes, build_char

    byte_tok = build_bytes()
    folder = tmp_path / "bytes-model"
    config = GPT2Config(vocab_size=len(byte_tok), n_embd=32, n_layer=1, n_head=2, n_positions=32)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    byte_tok.save_pretrained(folder)
    out = tmp_path / "bytes.gguf"
    r = _export(cli, folder, out)
    assert r.exit_code == 0, r.stderr
    reader = gguf.GGUFReader(out)
    assert len(_field(reader, "tokenizer.ggml.tokens")) == 257
    assert _field(reader, "tokenizer.ggml.pre") == "gpt-2"

    char_folder = tmp_path / "char-model"
    shutil.copytree(folder, char_folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (char_folder / name).unlink()
    build_char(CORPUS).save_pretrained(char_folder)
    r = _export(cli, char_folder, tmp_path / "char.gguf")
    assert r.exit_code == 2
    assert r.stdout == ""
    assert r.stderr.startswith("Error: character tokenizers") and "byte-level BPE" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "char.gguf").exists()


def test_existing_file_needs_overwrite(cli, gpt2_dir, tmp_path):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"keep me")
    r = _export(cli, gpt2_dir, out)
    assert r.exit_code == 2 and "already exists" in r.stderr and "--overwrite" in r.stderr
    assert out.read_bytes() == b"keep me"
    r = _export(cli, gpt2_dir, out, "--overwrite")
    assert r.exit_code == 0, r.stderr
    assert _field(gguf.GGUFReader(out), "general.architecture") == "gpt2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]  # no temporary file left


def test_failure_while_writing_leaves_no_file(cli, gpt2_dir, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = gguf.quants.quantize

    def fail_on_fifth(data, qtype):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(28, "No space left on device")
        return real(data, qtype)

    monkeypatch.setattr(gguf.quants, "quantize", fail_on_fifth)
    r = _export(cli, gpt2_dir, tmp_path / "m.gguf")
    assert r.exit_code == 1 and r.stderr.startswith("Error: cannot write") and "No space left" in r.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["--to", "onnx", "--out", "x.gguf"], "--to must be one of gguf"),
        (["--out", "x.gguf"], "--to is required"),
        (["--to", "gguf"], "--out is required"),
        (["--to", "gguf", "--out", "x.gguf", "--outtype", "q5_k"], "--outtype must be one of"),
        (["--to", "gguf", "--out", "missing/x.gguf"], "folder 'missing' does not exist"),
    ],
)
def test_bad_options_exit_2_before_loading(cli, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    r = cli("export", "no-such-model-folder/", *args)
    assert r.exit_code == 2, r.stderr
    assert r.stderr.startswith("Error: ") and message in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_q4_0_without_llama_cpp_names_llama_quantize(cli, gpt2_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("gptcli.export_gguf.llama_cpp_available", lambda: False)
    r = _export(cli, gpt2_dir, tmp_path / "m.gguf", "--outtype", "q4_0")
    assert r.exit_code == 2
    assert "llama-quantize" in r.stderr and "llama-cpp-python" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_unsupported_architecture_and_pickle_weights_are_refused(cli, gpt2_dir, tmp_path):
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    neox = tmp_path / "neox"
    config = GPTNeoXConfig(vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    AutoModelForCausalLM.from_config(config).save_pretrained(neox)
    _tokenizer(gpt2_dir).save_pretrained(neox)
    r = _export(cli, neox, tmp_path / "neox.gguf")
    assert r.exit_code == 2 and "cannot export a 'gpt_neox' model" in r.stderr and "convert_hf_to_gguf" in r.stderr

    pickled = tmp_path / "pickled"
    shutil.copytree(gpt2_dir, pickled)
    (pickled / "model.safetensors").unlink()
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    r = _export(cli, pickled, tmp_path / "p.gguf")
    assert r.exit_code == 1 and "pickle" in r.stderr
    assert not (tmp_path / "p.gguf").exists()


def test_export_help(cli):
    r = cli("export", "--help", env={"COLUMNS": "200"})
    assert r.exit_code == 0 and r.stderr == ""
    assert "--outtype" in r.stdout and "--overwrite" in r.stdout and "gguf" in r.stdout


# --------------------------------------------------------------------------- in llama.cpp


def _llama_cpp_greedy(path: Path, prompt: str, new_tokens: int) -> tuple[list[int], str]:
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=1, verbose=False)
    ids = llm.tokenize(prompt.encode(), add_bos=True, special=False)
    out: list[int] = []
    for token in llm.generate(ids, temp=0.0, repeat_penalty=1.0):
        if llm.token_eos() == token or len(out) == new_tokens:
            break
        out.append(token)
    return ids, llm.detokenize(out).decode("utf-8", errors="replace")


@pytest.fixture(scope="module")
def trained_gpt2(tmp_path_factory):
    """A GPT-2 made by `gptcli train` (its own BPE tokenizer), trained for a few steps."""
    pytest.importorskip("llama_cpp")
    from test_train_support import cli as run
    from test_train_support import corpus

    folder = tmp_path_factory.mktemp("trained-gpt2")
    args = ["--arch", "gpt2", "--preset", "tiny", "--vocab-size", "512", "--steps", "40", "--threads", "1"]
    code, _, err = run("train", corpus(folder, lines=2000), *args, "--out", folder / "run")
    assert code == 0, err
    return folder / "run"


# Models trained by gptcli (its BPE tokenizer): the two bundled ones (Llama blocks) and a GPT-2.
@pytest.mark.parametrize(
    "model, prompt",
    [
        ("tinystories", "Once upon a time, Lily found a red ball"),
        ("tiny-en-fr", "English: I like the sea.\nFrench:"),
        ("trained-gpt2", "Tom saw a red"),
    ],
)
def test_llama_cpp_greedy_text_equals_gptcli(cli, tmp_path, model, prompt, request):
    pytest.importorskip("llama_cpp")
    from gptcli import bundled

    folder = request.getfixturevalue("trained_gpt2") if model == "trained-gpt2" else bundled.path_of(model)
    out = tmp_path / f"{model}.gguf"
    assert _export(cli, folder, out, "--outtype", "f32").exit_code == 0
    new_tokens = 40
    r = cli("generate", prompt, "-m", folder, "--greedy", "-t", str(new_tokens), "--dtype", "float32", "--json")
    assert r.exit_code == 0, r.stderr
    ours = r.json_lines()[0]
    ids, text = _llama_cpp_greedy(out, prompt, new_tokens)
    assert ids == _tokenizer(Path(folder))(prompt)["input_ids"]
    assert text == ours["text"] and text.strip()  # and something was generated to compare


def test_llama_cpp_tokenizes_like_the_trained_tokenizer(tmp_path, cli):
    llama_cpp = pytest.importorskip("llama_cpp")
    from gptcli import bundled

    out = tmp_path / "ts.gguf"
    assert _export(cli, "tinystories", out, "--outtype", "q8_0").exit_code == 0
    tok = _tokenizer(bundled.path_of("tinystories"))
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=64, n_threads=1, verbose=False, vocab_only=True)
    texts = [
        "Once upon a time,  there was a dog.\n\nIt's 2024: 3.14 apples!",
        "Café naïve jalapeño — 日本語 🙂 can't won't I'll",
        "   leading spaces\tand\ttabs\n",
    ]
    for text in texts:
        assert llm.tokenize(text.encode(), add_bos=True, special=False) == tok(text)["input_ids"], text


def test_q4_0_through_llama_cpp_quantizer(cli, llama_dir, tmp_path):
    pytest.importorskip("llama_cpp")
    out = tmp_path / "q4.gguf"
    r = _export(cli, llama_dir, out, "--outtype", "q4_0", "--json")
    assert r.exit_code == 0, r.stderr
    assert r.stderr == ""  # llama.cpp's own log stays off gptcli's stderr
    tensors = _tensors(gguf.GGUFReader(out))
    assert tensors["blk.0.ffn_up.weight"].tensor_type.name == "Q4_0"
    assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q4.gguf"]


def test_shell_completion_offers_export_values_and_keeps_translate_languages(cli):
    r = cli("completion", "bash")
    assert r.exit_code == 0
    to_lines = [line.strip() for line in r.stdout.split("\n") if line.strip().startswith("--to)")]
    assert any('-W "gguf"' in line for line in to_lines)  # export --to
    assert any(" fr " in line for line in to_lines)  # translate --to
    assert any(line.strip().startswith("--outtype)") and "q8_0 q4_0" in line for line in r.stdout.split("\n"))
