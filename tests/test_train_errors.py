"""Bad input for train/finetune: one `Error:` line, the right exit code, nothing written."""

from __future__ import annotations

import json

import pytest
from test_train_support import TINY, cli, corpus


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_missing_data_file(tmp_path):
    code, out, err = cli("train", tmp_path / "nope.txt", *TINY, "--out", tmp_path / "o")
    assert code == 2 and out == ""
    assert "does not exist" in _one_error_line(err)
    assert not (tmp_path / "o").exists()


def test_empty_data_file(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    code, _, err = cli("train", empty, *TINY, "--out", tmp_path / "o")
    assert code == 1 and "holds no text" in _one_error_line(err)


def test_jsonl_without_text_field(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a b c"}\n{"body": "x"}\n', encoding="utf-8")
    code, _, err = cli("train", data, *TINY, "--out", tmp_path / "o")
    line = _one_error_line(err)
    assert code == 1 and "line 2" in line and '"text"' in line
    code, _, err = cli("train", data, *TINY, "--text-field", "body", "--out", tmp_path / "o2")
    assert code == 1 and 'line 1 has no field "body"' in _one_error_line(err)


def test_non_utf8_names_the_file(tmp_path):
    data = tmp_path / "latin1.txt"
    data.write_bytes("Caf\xe9 au lait\n".encode("latin-1") * 50)
    code, _, err = cli("train", data, *TINY, "--out", tmp_path / "o")
    line = _one_error_line(err)
    assert code == 1 and "latin1.txt" in line and "UTF-8" in line and "offset 3" in line


def test_data_smaller_than_one_block(tmp_path):
    data = tmp_path / "tiny.txt"
    data.write_text("Tom saw a cat.\n", encoding="utf-8")
    code, _, err = cli("train", data, *TINY, "--tokenizer-type", "bytes", "--val-split", "0", "--out", tmp_path / "o")
    assert code == 1 and "smaller than one block of 33 tokens" in _one_error_line(err)


def test_validation_split_smaller_than_one_block(tmp_path):
    data = corpus(tmp_path, lines=40)
    code, _, err = cli("train", data, *TINY, "--val-split", "0.001", "--out", tmp_path / "o")
    assert code == 2 and "validation split" in _one_error_line(err)


def test_block_size_larger_than_model_context(tmp_path, gpt2_dir):
    data = corpus(tmp_path)
    cfg = tmp_path / "model.json"
    cfg.write_text('{"model_type": "gpt2", "n_positions": 16, "n_embd": 32, "n_layer": 1, "n_head": 2}')
    code, _, err = cli("train", data, *TINY, "--model-config", cfg, "--out", tmp_path / "o")
    assert code == 2 and "larger than the model's context (16 tokens)" in _one_error_line(err)
    code, _, err = cli("finetune", data, "--model", gpt2_dir, "--block-size", "128", "--out", tmp_path / "f")
    assert code == 2 and "--block-size 128 is larger than the model's context (64 tokens)" in _one_error_line(err)


def test_lora_targets_missing_from_architecture(tmp_path, gpt2_dir):
    data = corpus(tmp_path)
    code, _, err = cli(
        "finetune",
        data,
        "--model",
        gpt2_dir,
        "--lora",
        "--lora-targets",
        "q_proj",
        "--out",
        tmp_path / "o",
        "--steps",
        "2",
    )
    line = _one_error_line(err)
    assert code == 2 and "q_proj" in line and "c_attn" in line  # names what the model does have


def test_device_cuda_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = cli("train", corpus(tmp_path), *TINY, "--device", "cuda", "--out", tmp_path / "o")
    assert code == 2 and "CUDA is not available" in _one_error_line(err)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--val-split", "1.5"], "--val-split must be in [0, 1)"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--preset", "huge"], "--preset must be one of"),
        (["--precision", "fp8"], "--precision must be one of"),
        (["--tokenizer-type", "words"], "--tokenizer-type must be one of"),
        (["--steps", "3", "--epochs", "1"], "either --steps or --epochs"),
        (["--n-embd", "30", "--n-head", "4"], "multiple of --n-head"),
        (["--lr", "-1"], "--lr must be positive"),
        (["--dropout", "1"], "--dropout must be in [0, 1)"),
        (["--resume", "auto", "--overwrite"], "contradict"),
        (["--precision", "fp16", "--device", "cpu"], "--precision fp16 needs a GPU"),
    ],
)
def test_bad_flag_values(tmp_path, args, message):
    data = tmp_path / "d.txt"
    data.write_text("hello\n", encoding="utf-8")
    code, out, err = cli("train", data, *TINY, *args, "--out", tmp_path / "o")
    assert code == 2 and out == ""
    assert message in _one_error_line(err)


def test_missing_out_and_data(tmp_path):
    code, _, err = cli("train", "--steps", "2")
    assert code == 2 and "no training data" in _one_error_line(err)
    code, _, err = cli("train", corpus(tmp_path), "--steps", "2")
    assert code == 2 and "--out is required" in _one_error_line(err)


def test_bad_config_files(tmp_path):
    data = corpus(tmp_path)
    unknown = tmp_path / "a.yaml"
    unknown.write_text("stepz: 3\n", encoding="utf-8")
    code, _, err = cli("train", data, "--config", unknown, "--out", tmp_path / "o")
    assert code == 2 and "unknown setting 'stepz'" in _one_error_line(err)
    broken = tmp_path / "b.yaml"
    broken.write_text("steps: [3\n", encoding="utf-8")
    code, _, err = cli("train", data, "--config", broken, "--out", tmp_path / "o")
    assert code == 2 and "not valid YAML" in _one_error_line(err)
    wrong_type = tmp_path / "c.toml"
    wrong_type.write_text('steps = "many"\n', encoding="utf-8")
    code, _, err = cli("train", data, "--config", wrong_type, "--out", tmp_path / "o")
    assert code == 2 and "'steps' has an invalid value" in _one_error_line(err)


def test_merge_needs_lora(tmp_path, gpt2_dir):
    code, _, err = cli("finetune", corpus(tmp_path), "--model", gpt2_dir, "--merge", "--out", tmp_path / "o")
    assert code == 2 and "--merge only applies to --lora" in _one_error_line(err)


def test_fsdp_refuses_lora(tmp_path, gpt2_dir):
    code, _, err = cli("finetune", corpus(tmp_path), "--model", gpt2_dir, "--lora", "--fsdp", "--out", tmp_path / "o")
    line = _one_error_line(err)
    assert code == 2 and "--fsdp" in line and "--lora" in line
    assert not (tmp_path / "o").exists()


def test_fsdp_in_one_process_is_a_noted_no_op(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("fsdp: true\n", encoding="utf-8")  # settable from the config file like every flag
    code, out, err = cli(
        "train", corpus(tmp_path), *TINY, "--steps", "1", "--config", config, "--out", tmp_path / "o", "--json"
    )
    assert code == 0, err
    assert err.count("--fsdp has no effect in a single process") == 1
    assert json.loads(out)["fsdp"] is False
    assert (tmp_path / "o" / "model.safetensors").is_file()
