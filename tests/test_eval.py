"""`gptcli eval` as a user meets it: inputs, outputs, comparison, bad input."""

import json
import math

import pytest
from transformers import AutoTokenizer

TEXT = "Once upon a time there was a little dog named Max. Max liked to run in the park with his friend Tom.\n"


def test_compare_two_models_plain_table_from_piped_stdin(cli, gpt2_dir, llama_dir):
    """Piped: stdin is the text, stdout a plain table (no escapes, no box lines), stderr quiet."""
    r = cli("eval", "-m", gpt2_dir, "-m", llama_dir, stdin=TEXT, env={"TERM": "xterm-256color"})
    assert r.exit_code == 0, r.stderr
    out = r.stdout
    assert "\x1b" not in out and "\x1b" not in r.stderr
    assert not set("─━│┃┌┏") & set(out)
    header, *rows = out.strip().splitlines()
    assert header.split() == ["model", "docs", "tokens", "nll/token", "perplexity", "bits/byte", "tokens/s"]
    assert [row.split()[0] for row in rows] == [str(gpt2_dir), str(llama_dir)]
    for row in rows:
        nll, ppl = float(row.split()[3]), float(row.split()[4])
        assert abs(math.exp(nll) - ppl) < 0.01 * ppl
    assert "Error" not in r.stderr


def test_json_summary_one_line_per_model(cli, gpt2_dir, llama_dir, tmp_path):
    (tmp_path / "a.txt").write_text(TEXT, encoding="utf-8")
    r = cli("eval", tmp_path / "a.txt", "-m", gpt2_dir, "-m", llama_dir, "--json", "--dtype", "float32")
    assert r.exit_code == 0, r.stderr
    recs = r.json_lines()
    assert [rec["model"] for rec in recs] == [str(gpt2_dir), str(llama_dir)]
    for rec in recs:
        assert {
            "model",
            "documents",
            "skipped_documents",
            "tokens",
            "bytes",
            "nll",
            "ppl",
            "bits_per_byte",
            "tokens_per_s",
            "elapsed_s",
            "context",
            "stride",
            "device",
            "dtype",
        } <= set(rec)
        assert rec["documents"] == 1 and rec["dtype"] == "float32" and rec["stride"] == rec["context"] == 64
        assert abs(rec["ppl"] - math.exp(rec["nll"])) < 1e-6 * rec["ppl"]
        assert rec["tokens_per_s"] > 0


def test_jsonl_text_field_ids_and_max_docs(cli, gpt2_dir, tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [
        {"id": "first", "body": TEXT},
        {"body": "The sun was warm and the sky was blue."},
        {"body": "Mom said hi."},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    r = cli("eval", path, "-m", gpt2_dir, "--text-field", "body", "--per-doc", "--max-docs", 2)
    assert r.exit_code == 0, r.stderr
    recs = r.json_lines()
    assert [x["id"] for x in recs] == ["first", f"{path}:2"]
    for x in recs:
        assert {"id", "tokens", "nll", "ppl", "bits_per_byte", "bytes", "model"} <= set(x)
    # --per-doc keeps stdout pure JSONL; the summary table goes to stderr.
    assert "perplexity" in r.stderr


def test_csv_and_parquet_columns(cli, gpt2_dir, tmp_path):
    import datasets

    (tmp_path / "d.csv").write_text(
        'title,story\nA,"Max liked to run in the park."\nB,"The sun was warm."\n', encoding="utf-8"
    )
    datasets.Dataset.from_dict({"story": ["Tom and Sue went to the sea.", "Mom said hi."]}).to_parquet(
        str(tmp_path / "e.parquet")
    )
    r = cli("eval", tmp_path / "d.csv", tmp_path / "e.parquet", "-m", gpt2_dir, "--text-field", "story", "--per-doc")
    assert r.exit_code == 0, r.stderr
    assert [d["id"] for d in r.json_lines()] == [
        f"{tmp_path / 'd.csv'}:1",
        f"{tmp_path / 'd.csv'}:2",
        f"{tmp_path / 'e.parquet'}:1",
        f"{tmp_path / 'e.parquet'}:2",
    ]


def test_max_tokens_cuts_the_sample(cli, gpt2_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(gpt2_dir)
    (tmp_path / "a.txt").write_text(TEXT, encoding="utf-8")
    (tmp_path / "b.txt").write_text(TEXT, encoding="utf-8")
    n = len(tok(TEXT)["input_ids"])
    r = cli("eval", tmp_path, "-m", gpt2_dir, "--max-tokens", n + 10, "--per-doc")
    assert r.exit_code == 0, r.stderr
    a, b = r.json_lines()
    assert a["tokens"] == n and "truncated" not in a
    assert b["tokens"] == 10 and b["truncated"] is True
    assert 0 < b["bytes"] < a["bytes"]


def test_single_token_document_is_scored_after_the_end_of_text_token(cli, gpt2_dir, tmp_path):
    """Every token is scored after the EOS prefix (lm-evaluation-harness's rule), a document's first one too."""
    tok = AutoTokenizer.from_pretrained(gpt2_dir)
    assert len(tok("Max")["input_ids"]) == 1
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": TEXT}) + "\n" + json.dumps({"text": "Max"}) + "\n", encoding="utf-8")
    r = cli("eval", path, "-m", gpt2_dir, "--per-doc", "--json")
    assert r.exit_code == 0, r.stderr
    full, single, summary = r.json_lines()
    assert full["tokens"] == len(tok(TEXT)["input_ids"]) and full["bytes"] == len(TEXT.encode())
    assert single["tokens"] == 1 and single["bytes"] == 3 and math.isfinite(single["nll"]) and "skipped" not in single
    assert summary["documents"] == 2 and summary["skipped_documents"] == 0 and "skipped" not in r.stderr


def _without_bos_or_eos(gpt2_dir, folder):
    import shutil

    shutil.copytree(gpt2_dir, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    for key in ("bos_token", "eos_token"):
        config.pop(key, None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_no_prefix_token_single_token_document_is_skipped_with_a_count(cli, gpt2_dir, tmp_path):
    model = _without_bos_or_eos(gpt2_dir, tmp_path / "m")
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": TEXT}) + "\n" + json.dumps({"text": "Max"}) + "\n", encoding="utf-8")
    r = cli("eval", path, "-m", model, "--per-doc", "--json")
    assert r.exit_code == 0, r.stderr
    assert "NaN" not in r.stdout and "Infinity" not in r.stdout  # what json.dumps writes for nan/inf
    full, single, summary = r.json_lines()
    assert full["tokens"] == len(AutoTokenizer.from_pretrained(gpt2_dir)(TEXT)["input_ids"]) - 1
    assert single["skipped"] and single["tokens"] == 0 and single["nll"] is None
    assert summary["documents"] == 1 and summary["skipped_documents"] == 1
    assert summary["tokens"] == full["tokens"] and math.isfinite(summary["nll"])
    assert "skipped 1 document" in r.stderr
    r = cli("eval", "-m", model, stdin="Max")
    assert r.exit_code == 2
    assert r.stderr.startswith("Error: nothing to score") and r.stdout == ""


@pytest.mark.parametrize("stdin", ["", "  \n\n"])
def test_empty_stdin_is_a_usage_error(cli, stdin):
    r = cli("eval", "-m", "/nonexistent-model-not-loaded", stdin=stdin)
    assert r.exit_code == 2
    assert r.stderr.strip() == "Error: no text to evaluate in stdin." and r.stdout == ""


def test_empty_file_and_no_input_are_usage_errors(cli, tmp_path):
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    r = cli("eval", tmp_path / "empty.txt")
    assert r.exit_code == 2 and "no text to evaluate" in r.stderr
    r = cli("eval")  # stdin is a terminal and no file given
    assert r.exit_code == 2 and "no text to evaluate" in r.stderr


def test_jsonl_line_that_is_not_json(cli, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": oops}\n', encoding="utf-8")
    r = cli("eval", path, "-m", "/nonexistent-model-not-loaded")
    assert r.exit_code == 1
    assert r.stderr.startswith(f"Error: {path} line 2 is not valid JSON") and r.stdout == ""


def test_missing_text_field(cli, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"body": "hello there"}) + "\n", encoding="utf-8")
    r = cli("eval", path)
    assert r.exit_code == 1
    assert 'line 1 has no field "text"' in r.stderr and "--text-field" in r.stderr
    r = cli("eval", path, "--text-field", "story")
    assert r.exit_code == 1 and 'no field "story"' in r.stderr


def test_non_utf8_bytes_name_file_and_offset(cli, tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"Caf" + b"\xe9 au lait")
    r = cli("eval", path)
    assert r.exit_code == 1
    assert str(path) in r.stderr and "offset 3" in r.stderr and r.stdout == ""


@pytest.mark.parametrize(
    "args, message",
    [
        (("--stride", "0"), "--stride must be at least 1"),
        (("--batch-size", "0"), "--batch-size must be at least 1"),
        (("--max-tokens", "1"), "--max-tokens must be at least 2"),
        (("--context", "1"), "--context must be at least 2"),
        (("--context", "16", "--stride", "17"), "longer than --context 16"),
        (("--dtype", "float8"), "unknown dtype"),
    ],
)
def test_bad_options_fail_before_loading(cli, tmp_path, args, message):
    (tmp_path / "a.txt").write_text(TEXT, encoding="utf-8")
    r = cli("eval", tmp_path / "a.txt", "-m", "/nonexistent-model-not-loaded", *args)
    assert r.exit_code == 2 and message in r.stderr


def test_stride_longer_than_context(cli, gpt2_dir, tmp_path):
    (tmp_path / "a.txt").write_text(TEXT, encoding="utf-8")
    r = cli("eval", tmp_path / "a.txt", "-m", gpt2_dir, "--stride", 65)
    assert r.exit_code == 2 and "context" in r.stderr
    r = cli("eval", tmp_path / "a.txt", "-m", gpt2_dir, "--context", 65)
    assert r.exit_code == 2 and "(64 tokens)" in r.stderr


def test_default_model_is_the_bundled_one(cli):
    from gptcli import bundled

    if bundled.path_of(bundled.DEFAULT_MODEL) is None:
        pytest.skip("bundled model not built")
    r = cli(
        "eval", "--json", stdin="Once upon a time, there was a little girl named Lily. She loved to play outside.\n"
    )
    assert r.exit_code == 0, r.stderr
    (rec,) = r.json_lines()
    assert rec["model"] == bundled.DEFAULT_MODEL
    # A story model trained on TinyStories predicts a TinyStories sentence far better than chance.
    assert rec["tokens"] > 5 and rec["bits_per_byte"] < 2.0
