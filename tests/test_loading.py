"""The shared model-loading layer: safety rules, corrupt files, offline Hub ids, adapters."""

import json
import shutil

import pytest


def copy_model(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_pickle_weights_refused_without_flag(cli, gpt2_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    d = copy_model(gpt2_dir, tmp_path / "pickled")
    state = load_file(d / "model.safetensors")
    (d / "model.safetensors").unlink()
    torch.save(state, d / "pytorch_model.bin")
    r = cli("generate", "hi", "-m", d, "-t", 2)
    assert r.exit_code == 1
    assert "pickle" in r.stderr and "--allow-pickle" in r.stderr
    r = cli("generate", "hi", "-m", d, "-t", 2, "--allow-pickle", "--json", "--seed", 1)
    assert r.exit_code == 0, r.stderr


def test_truncated_safetensors_is_named(cli, gpt2_dir, tmp_path):
    d = copy_model(gpt2_dir, tmp_path / "truncated")
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    r = cli("generate", "hi", "-m", d, "-t", 2)
    assert r.exit_code == 1
    assert str(f) in r.stderr and "corrupt" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_remote_code_needs_explicit_flag(cli, gpt2_dir, tmp_path):
    d = copy_model(gpt2_dir, tmp_path / "remote")
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (d / "config.json").write_text(json.dumps(cfg))
    r = cli("generate", "hi", "-m", d, "-t", 2)
    assert r.exit_code == 1 and "--trust-remote-code" in r.stderr


def test_uncached_hub_id_offline_fails_in_one_line(cli, tmp_path):
    r = cli("generate", "hi", "-m", "someone/not-a-cached-model", env={"HF_HOME": str(tmp_path / "hf")})
    assert r.exit_code == 1
    assert "not in the local Hugging Face cache" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_hub_unreachable_without_offline_flag_is_a_connection_failure(tmp_path):
    """No network and no HF_HUB_OFFLINE: say the Hub could not be reached (not "not found"), naming the flag used."""
    from conftest import cli_env, run_cli

    env = cli_env(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"))  # a closed port
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(var, None)
    data = tmp_path / "d.txt"
    data.write_text("Once upon a time.\n", encoding="utf-8")
    for args, flag in (
        (["generate", "hi", "-m", "gpt2"], "--model"),
        (["train", data, "--tokenizer", "gpt2", "--out", tmp_path / "run"], "--tokenizer"),
    ):
        r = run_cli(*args, env=env, timeout=60)
        err = r.stderr.decode()
        assert r.returncode == 1, err
        assert "could not connect to the Hugging Face Hub" in err and "not found" not in err
        assert f"'gpt2' ({flag})" in err and f"local folder with {flag}" in err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_uncached_tokenizer_offline_names_the_tokenizer_flag(cli, tmp_path):
    data = tmp_path / "d.txt"
    data.write_text("Once upon a time.\n", encoding="utf-8")
    r = cli(
        "train",
        data,
        "--tokenizer",
        "someone/not-cached",
        "--out",
        tmp_path / "run",
        env={"HF_HOME": str(tmp_path / "hf")},
    )
    assert r.exit_code == 1 and "not in the local Hugging Face cache" in r.stderr
    assert "with --tokenizer" in r.stderr and "--model" not in r.stderr


def test_no_model_and_no_default_is_a_usage_error(cli, monkeypatch):
    from gptcli import bundled

    monkeypatch.setattr(bundled, "DEFAULT_MODEL", "no-such-bundled-model")
    r = cli("generate", "hi")
    assert r.exit_code == 2 and "--model" in r.stderr


def test_loaded_model_describes_itself(gpt2_dir, llama_dir):
    from gptcli.loading import load_model
    from gptcli.runtime import resolve_runtime

    rt = resolve_runtime("cpu", "float32")
    for d in (gpt2_dir, llama_dir):
        lm = load_model(str(d), rt)
        assert lm.context_length == 64
        assert not lm.is_encoder_decoder and not lm.has_chat_template
        assert lm.eos_token_ids == [lm.tokenizer.convert_tokens_to_ids("<|endoftext|>")]
        assert lm.tokenizer.padding_side == "left"


def test_fast_path_keeps_logits(gpt2_dir, llama_dir):
    """The packed-weight CPU fast path gives the same logits (bf16 exactly, fp32 within rounding)."""
    import torch

    from gptcli.cpu_tuning import optimize_for_inference
    from gptcli.loading import load_model
    from gptcli.runtime import resolve_runtime

    for d in (gpt2_dir, llama_dir):
        for dtype, tol in (("float32", 1e-4), ("bfloat16", 0.0)):
            rt = resolve_runtime("cpu", dtype)
            plain, packed = load_model(str(d), rt), load_model(str(d), rt)
            n = optimize_for_inference(packed.model, rt, min_weights=0)
            if n == 0:
                pytest.skip("oneDNN packing unavailable on this CPU")
            ids = plain.tokenizer("Once upon a time", return_tensors="pt")["input_ids"]
            with torch.inference_mode():
                a, b = plain.model(ids).logits.float(), packed.model(ids).logits.float()
            assert (a - b).abs().max().item() <= tol * max(1.0, a.abs().max().item())


def test_fused_gelu_keeps_logits(gpt2_dir):
    """GPT-2's composed tanh-GELU is swapped for the fused kernel: same logits up to rounding."""
    import torch

    from gptcli.cpu_tuning import fuse_activations
    from gptcli.loading import load_model
    from gptcli.runtime import resolve_runtime

    rt = resolve_runtime("cpu", "float32")
    plain, fused = load_model(str(gpt2_dir), rt), load_model(str(gpt2_dir), rt)
    assert fuse_activations(fused.model) == fused.model.config.n_layer
    ids = plain.tokenizer("Once upon a time", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        a, b = plain.model(ids).logits, fused.model(ids).logits
    assert (a - b).abs().max().item() <= 1e-4 * max(1.0, a.abs().max().item())


def test_inference_keeps_sdpa_attention_and_training_switches_to_eager(gpt2_dir):
    """CPU inference keeps transformers' fused SDPA attention (faster than plain attention in every
    generation shape with this PyTorch); training switches to plain attention through the one
    switch, and a model without an eager path keeps its default."""
    from gptcli.cpu_tuning import use_eager_attention
    from gptcli.loading import open_model

    tuned, _ = open_model(str(gpt2_dir), device="cpu", dtype="float32")
    assert tuned.model.config._attn_implementation == "sdpa"
    assert use_eager_attention(tuned.model) and tuned.model.config._attn_implementation == "eager"
    assert use_eager_attention(object()) is False


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_weights_left_in_the_file_are_copied_once_the_rest_is(arch, gpt2_dir, llama_dir):
    """A model's tensors load as views of the mapped safetensors file, and every page read stays
    resident while any tensor holds the mapping. Once the fast path has copied the big layers,
    the few tensors left in the file are copied too (same values, ties kept); while most of the
    model still reads from the file, nothing is copied."""
    import torch

    from gptcli.loading import open_model
    from gptcli.memory import _file_mappings, release_weight_files

    lm = open_model(str(gpt2_dir if arch == "gpt2" else llama_dir), device="cpu", dtype="float32", fast=False)[0]
    model = lm.model

    def in_file(t):
        return any(a <= t.untyped_storage().data_ptr() < b for a, b in _file_mappings())

    assert all(in_file(p) for p in model.parameters())  # loaded as views of the file
    assert release_weight_files(model) == 0
    ids = torch.tensor([[5, 9, 2, 7]])
    with torch.no_grad():
        before = model(ids).logits
        for module in model.modules():  # what packing does: the linear layers get their own copies
            if type(module).__name__ not in ("Linear", "Conv1D"):
                continue
            if module.weight is not model.get_input_embeddings().weight:  # a tied head stays tied
                module.weight = torch.nn.Parameter(module.weight.detach().clone())
    copied = release_weight_files(model)
    assert copied > 0
    assert not any(in_file(t) for t in (*model.parameters(), *model.buffers()))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)
    if arch == "gpt2":
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_file_pages_under_a_copied_weight_are_given_back(tmp_path):
    """Once a weight is copied into a new layout, the pages of the mapped file under it leave the
    process (loading no longer holds the file and the copies together); a tensor the model still
    reads keeps its pages, and a late read of a dropped one gets the file's bytes again."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from gptcli.memory import _file_mappings, drop_file_pages

    def resident_file_kb():
        status = open("/proc/self/status").read()
        return int(status.split("RssFile:")[1].split()[0])

    torch.manual_seed(0)
    w, e = torch.randn(1024, 1024), torch.randn(256, 1024)
    save_file({"w": w, "e": e}, str(tmp_path / "model.safetensors"))
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        mapped_w, mapped_e = f.get_tensor("w"), f.get_tensor("e")
    if not any(a <= mapped_w.data_ptr() < b for a, b in _file_mappings()):
        pytest.skip("this safetensors version copies tensors out of the file")
    assert float(mapped_w.sum()) == float(w.sum())  # every page read: resident
    model = torch.nn.Module()
    model.register_buffer("e", mapped_e)  # the model still reads this one
    before = resident_file_kb()
    dropped = drop_file_pages(mapped_w, model)
    assert dropped >= 4 * 2**20 - 2 * 4096
    assert before - resident_file_kb() >= 3 * 1024
    assert drop_file_pages(mapped_e, model) == 0
    assert torch.equal(mapped_w, w) and torch.equal(mapped_e, e)
