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
        (["--temperature", "nan"], "--temperature must be a finite number"),
        (["--repetition-penalty", "nan"], "--repetition-penalty must be a finite number"),
        (["--top-p", "nan"], "--top-p"),
        (["--min-p", "nan"], "--min-p"),
        (["--temperature", "inf"], "--temperature must be a finite number"),
        (["-n", "100000000"], "--num-return-sequences must be from 1 to 1024"),
        (["--seed", str(10**23)], "--seed must be from 0 to 18446744073709551615"),
        (["--seed", "-1"], "--seed"),
    ],
)
def test_out_of_range_values_are_usage_errors_before_loading(cli, args, fragment):
    r = cli("generate", "hello", "-m", NO_MODEL, *args)
    assert r.exit_code == 2
    assert r.stderr.startswith("Error: ") and fragment in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert r.stdout == ""


def test_unknown_option_is_exit_2(cli):
    r = cli("generate", "--no-such-flag")
    assert r.exit_code == 2 and "No such option" in r.stderr and r.stdout == ""


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


@pytest.mark.parametrize(
    "value, fragment",
    [
        ('"temperature": NaN', "--temperature must be a finite number"),
        ('"repetition_penalty": NaN', "--repetition-penalty must be a finite number"),
        ('"max_new_tokens": 1e400', "max_new_tokens needs a whole number (got inf)"),
        ('"max_new_tokens": 2.5', "max_new_tokens needs a whole number"),
        ('"seed": 1e23', "--seed must be from 0 to"),
        ('"seed": ' + "9" * 5000, "5000 digits"),
        ('"id": ' + "9" * 5000, "5000 digits"),
        ('"num_return_sequences": 100000000', "--num-return-sequences must be from 1 to 1024"),
        ('"temperature": true', "temperature needs a number"),
    ],
)
def test_bad_jsonl_values_name_file_and_line_before_loading(cli, tmp_path, value, fragment):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "fine"}\n\n{"prompt": "a", ' + value + "}\n", encoding="utf-8")
    r = cli("generate", "--file", f, "-m", NO_MODEL)
    assert r.exit_code == 2, r.stderr
    assert r.stderr.startswith(f"Error: {f} line 3") and fragment in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and len(r.stderr) < 300
    assert r.stdout == ""


def test_config_json_that_is_not_an_object(cli, gpt2_dir, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(gpt2_dir, folder)
    (folder / "config.json").write_text("[1, 2]", encoding="utf-8")
    r = cli("generate", "hi", "-m", folder)
    assert r.exit_code == 1
    assert r.stderr.startswith("Error: ") and "config.json" in r.stderr and "not a JSON object" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "AttributeError" not in r.stderr


def test_memory_limit_too_low_for_a_library_is_one_line(cli, monkeypatch):
    """Under `ulimit -v`, loading numpy's shared libraries fails and numpy raises a page of
    installation advice; the user gets one line saying what happened."""

    def fail(*args, **kwargs):
        try:
            raise ImportError("libstdc++.so.6: failed to map segment from shared object")
        except ImportError as exc:
            raise ImportError(
                "\n\nIMPORTANT: PLEASE READ THIS FOR ADVICE ON HOW TO SOLVE THIS ISSUE!\n\n"
                + "Importing the numpy C-extensions failed.\n" * 5
                + f"\nOriginal error was: {exc}\n"
            ) from exc

    monkeypatch.setattr("gptcli.runtime.parse_device", fail)
    r = cli("generate", "hello", "-m", NO_MODEL)
    assert r.exit_code == 1
    assert r.stderr.startswith("Error: ") and "memory" in r.stderr and "failed to map segment" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "IMPORTANT" not in r.stderr

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr("gptcli.runtime.parse_device", no_memory)
    r = cli("generate", "hello", "-m", NO_MODEL)
    assert r.exit_code == 1 and r.stderr.startswith("Error: out of memory.") and len(r.stderr.splitlines()) == 1


@pytest.mark.parametrize("command", [["generate", "--file"], ["eval"], ["translate", "--to", "fr", "--file"]])
def test_jsonl_number_over_the_digit_limit_is_one_line_in_every_reader(cli, tmp_path, command):
    f = tmp_path / "data.jsonl"
    f.write_text(
        '{"prompt": "a", "text": "a"}\n{"prompt": "b", "text": "b", "n": ' + "9" * 5000 + "}\n", encoding="utf-8"
    )
    r = cli(*command, f, "-m", NO_MODEL)
    assert r.exit_code == 2
    assert r.stderr == f"Error: {f} line 2 has a number of 5000 digits; the limit is 4300.\n"
