"""Bad input: one `Error:` line, the right exit code, and no model loaded for usage errors."""

import pytest

NO_MODEL = "./no-such-model-folder"  # proves validation happens before any model loads


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--temperature", "-1"], "--temperature"),
        (["--top-p", "0"], "--top-p"),
        (["--top-p", "1.5"], "--top-p"),
        (["--max-new-tokens", "0"], "--max-new-tokens"),
        (["--min-p", "2"], "--min-p"),
        (["--device", "tpu"], "unknown device"),
        (["--dtype", "int8"], "unknown dtype"),
        (["-n", "0"], "--num-return-sequences"),
        (["--batch-size", "0"], "--batch-size"),
    ],
)
def test_out_of_range_values_are_usage_errors_before_loading(cli, args, fragment):
    r = cli("generate", "hello", "-m", NO_MODEL, *args)
    assert r.exit_code == 2
    assert r.stderr.startswith("Error: ") and fragment in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert r.stdout == ""


def test_missing_model_folder_is_a_usage_error(cli):
    r = cli("generate", "hello", "-m", NO_MODEL)
    assert r.exit_code == 2 and "does not exist" in r.stderr


def test_empty_stdin_is_a_usage_error(cli, gpt2_dir):
    r = cli("generate", "-m", gpt2_dir, stdin="")
    assert r.exit_code == 2 and "empty" in r.stderr


def test_no_prompt_with_terminal_stdin_is_a_usage_error(cli, gpt2_dir):
    r = cli("generate", "-m", gpt2_dir, stdin=None)
    assert r.exit_code == 2 and "no prompt" in r.stderr


def test_non_utf8_input_names_the_byte_offset(cli, gpt2_dir, tmp_path):
    r = cli("generate", "-m", gpt2_dir, stdin=b"caf\xc3\xa9 ok \xff\xfe")
    assert r.exit_code == 1
    assert "UTF-8" in r.stderr and "offset 9" in r.stderr
    f = tmp_path / "p.txt"
    f.write_bytes(b"hello\n\x80bad\n")
    r = cli("generate", "--file", f, "-m", gpt2_dir)
    assert r.exit_code == 1 and str(f) in r.stderr and "offset 6" in r.stderr


def test_bad_jsonl_line_is_named(cli, gpt2_dir, tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a"}\n{not json}\n', encoding="utf-8")
    r = cli("generate", "--file", f, "-m", gpt2_dir)
    assert r.exit_code == 1 and "line 2" in r.stderr


def test_unavailable_cuda_is_a_usage_error_naming_devices(cli, gpt2_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    r = cli("generate", "hi", "-m", gpt2_dir, "--device", "cuda")
    assert r.exit_code == 2 and "CUDA is not available" in r.stderr and "cpu" in r.stderr


def test_debug_env_shows_traceback(cli):
    r = cli("generate", "hello", "-m", NO_MODEL, env={"GPTCLI_DEBUG": "1"})
    assert r.exit_code == 2 and "Traceback" in r.stderr
