"""`gptcli translate` end to end: alignment, streaming, both model paths, bad input.

In-process through the CLI's error boundary (the `cli` fixture) except where a real
process is the point: a closed pipe (`| head`) and line-by-line streaming over a pipe.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import cli_env

# One thread: these models are tiny, and the test machine's cores are shared.
THREADS = {"GPTCLI_THREADS": "1"}
ENV = cli_env(**THREADS)


@pytest.fixture
def translate(cli):
    # stdin defaults to an empty pipe, as in a subprocess run with nothing piped in.
    def invoke(*args, stdin: bytes | str = b""):
        return cli("translate", *args, stdin=stdin, env=THREADS)

    return invoke


@pytest.fixture(scope="module")
def causal_dir(tmp_path_factory):
    from tiny_translate import build_causal

    return build_causal(tmp_path_factory.mktemp("causal"), "gpt2", context=128)


def lines_of(text: str) -> list[str]:
    assert text.endswith("\n")
    return text[:-1].split("\n")


MIXED = [
    "Hello world.",
    "",
    "Café, naïve, jalapeño: déjà vu!",
    "日本語のテキスト。🙂 emoji 🎉",
    "   ",
    "",
    " ".join(["The cat is black.", "Where is the station?"] * 12),  # longer than the 64-token context
    "Last line without a newline",
]


def test_marian_stdin_keeps_one_line_per_line(translate, marian_dir):
    res = translate("--to", "fr", "-m", marian_dir, "-b", "3", stdin="\n".join(MIXED))
    assert res.exit_code == 0, res.stderr
    out = lines_of(res.stdout)
    assert len(out) == len(MIXED)
    assert [i for i, line in enumerate(out) if line == ""] == [i for i, line in enumerate(MIXED) if not line.strip()]
    assert "Traceback" not in res.stderr and res.stderr == ""


def test_causal_plain_prompt_with_jsonl_records(translate, causal_dir, tmp_path):
    src = tmp_path / "items.jsonl"
    records = [
        {"id": "a", "text": "I like tea."},
        {"id": 7, "text": ""},
        {"id": "c", "text": "Où est la gare ? 🙂", "extra": 1},
    ]
    src.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", encoding="utf-8")
    # Beam search sends causal prompts through model.generate, with the end-of-line stop.
    res = translate("--from", "en", "--to", "French", "-m", causal_dir, "--file", src, "--num-beams", "2")
    assert res.exit_code == 0, res.stderr
    got = [json.loads(line) for line in lines_of(res.stdout)]
    assert [g["id"] for g in got] == ["a", 7, "c"]
    assert [g["text"] for g in got] == [r["text"] for r in records] and got[2]["extra"] == 1
    assert all(isinstance(g["translation"], str) and "\n" not in g["translation"] for g in got)
    assert got[1]["translation"] == "" and got[0]["from"] == "en" and got[0]["to"] == "fr"


def test_plain_lines_with_json_output_and_output_file(translate, causal_dir, tmp_path):
    out = tmp_path / "out.jsonl"
    res = translate(
        "I like tea.\n\nGood night.", "--from", "en", "--to", "fr", "-m", causal_dir, "--json", "-o", out, "-v"
    )
    assert res.exit_code == 0, res.stderr
    assert res.stdout == ""
    got = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [(g["line"], g["text"]) for g in got] == [(1, "I like tea."), (2, ""), (3, "Good night.")]
    assert "lines/s" in res.stderr and not list(tmp_path.glob(".out.jsonl.*"))


def test_head_n_1_stops_quietly(marian_dir, tmp_path):
    src = tmp_path / "many.txt"
    src.write_text("Hello world. The cat is black.\n" * 300, encoding="utf-8")
    cmd = f'"{sys.executable}" -m gptcli translate --to fr -m "{marian_dir}" -t 4 < "{src}" | head -n 1; exit ${{PIPESTATUS[0]}}'
    res = subprocess.run(["bash", "-c", cmd], capture_output=True, env=ENV, timeout=120)
    assert res.returncode == 0, res.stderr
    assert len(res.stdout.splitlines()) == 1
    assert res.stderr == b""


def test_references_print_bleu_and_chrf(translate, marian_dir, tmp_path):
    from sacrebleu.metrics import BLEU, CHRF

    pairs = tmp_path / "pairs.tsv"
    pairs.write_text(
        "Hello world.\tBonjour le monde.\nHello world.\tSalut le monde.\nThe cat is black.\tLe chat est noir.\n",
        encoding="utf-8",
    )
    hyps_file = tmp_path / "hyps.txt"
    res = translate("-r", pairs, "--to", "fr", "-m", marian_dir, "--json", "-o", hyps_file)
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    hyps = hyps_file.read_text(encoding="utf-8").splitlines()
    assert len(hyps) == 2
    refs = [["Bonjour le monde.", "Le chat est noir."], ["Salut le monde.", None]]
    hyps = [h.strip() for h in hyps]
    assert report["bleu"] == round(BLEU().corpus_score(hyps, refs).score, 2)
    assert report["chrf"] == round(CHRF().corpus_score(hyps, refs).score, 2)
    assert (report["sentences"], report["references"], report["from"], report["to"]) == (2, 3, "en", "fr")


# --------------------------------------------------------------------------- bad input


def test_unknown_language_is_a_usage_error_with_close_matches(translate):
    res = translate("Hello", "--to", "frnch")
    assert res.exit_code == 2
    err = res.stderr
    assert err.startswith("Error: unknown language 'frnch'") and "French (fr)" in err and res.stdout == ""


def test_to_equal_to_from_is_a_usage_error(translate):
    res = translate("Hello", "--from", "en", "--to", "English")
    assert res.exit_code == 2
    assert "nothing to translate" in res.stderr and res.stdout == ""


def test_model_that_cannot_translate_into_the_language(translate, marian_dir):
    res = translate("Hello", "--to", "de", "-m", marian_dir)
    assert res.exit_code == 2
    err = res.stderr
    assert err.count("\n") == 1 and "cannot translate into German" in err and "English to French" in err


def test_pair_without_bundled_model_says_what_to_pass(translate):
    res = translate("Hello", "--from", "en", "--to", "de")
    assert res.exit_code == 2
    err = res.stderr
    assert "no bundled model translates English→German" in err and "opus-mt-en-de" in err


def test_non_utf8_stdin_names_the_line_after_earlier_lines_are_out(translate, marian_dir):
    res = translate("--to", "fr", "-m", marian_dir, stdin=b"Hello world.\nCaf\xe9 au lait\nmore\n")
    assert res.exit_code == 1
    assert "stdin line 2 is not valid UTF-8" in res.stderr
    assert len(lines_of(res.stdout)) == 1 and "Traceback" not in res.stderr


def test_sentence_longer_than_the_context_is_cut_with_one_warning(translate, marian_dir):
    long = ", ".join(["the cat is black"] * 30) + "."
    res = translate("--to", "fr", "-m", marian_dir, "-t", "4", stdin=f"Hello world.\n{long}\nI like tea.\n")
    assert res.exit_code == 0, res.stderr
    err = res.stderr
    assert err.count("\n") == 1 and err.startswith("Warning: line 2: a sentence too long for the model's context")
    assert len(lines_of(res.stdout)) == 3 and all(lines_of(res.stdout))


def test_sentence_far_longer_than_the_training_data_is_warned_once(translate, causal_dir, tmp_path):
    """A card's longest_training_source: one warning on stderr for the first line far past it, output intact."""
    import shutil

    from transformers import AutoTokenizer

    model = shutil.copytree(causal_dir, tmp_path / "model")
    tok = AutoTokenizer.from_pretrained(model)
    limit = max(len(tok(s)["input_ids"]) for s in ("Hello world.", "The cat is black."))
    long = "The cat is black and the station is where I like tea"
    assert 2 * limit < len(tok(long + ".")["input_ids"]) < 40  # far outside, but fits the context uncut
    card = {"translation": {"from": "en", "to": "fr"}, "longest_training_source": {"tokens": limit}}
    (model / "gptcli-model.json").write_text(json.dumps(card))
    res = translate("--to", "fr", "-m", model, "-t", "3", stdin=f"Hello world.\n\n{long}.\nOk. {long}!\n")
    assert res.exit_code == 0, res.stderr
    assert len(lines_of(res.stdout)) == 4 and lines_of(res.stdout)[1] == ""
    err = res.stderr.splitlines()
    assert len(err) == 1 and err[0].startswith("Warning: line 3: a sentence of ")
    assert f"was trained on (at most {limit}); its translation is likely to be wrong" in err[0]
    short = translate("--to", "fr", "-m", model, "-t", "3", stdin="Hello world.\nThe cat is black.\n")
    assert short.exit_code == 0 and short.stderr == ""


def test_bundled_model_is_the_default_for_english_to_french(translate):
    from gptcli import bundled

    if bundled.path_of("tiny-en-fr") is None:
        pytest.skip("the bundled tiny-en-fr model is not installed")
    res = translate("I'm cold.\n\nGood night.", "--to", "fr", "--json")
    assert res.exit_code == 0, res.stderr
    got = [json.loads(line) for line in lines_of(res.stdout)]
    assert [(g["model"], g["from"], g["to"]) for g in got] == [("tiny-en-fr", "en", "fr")] * 3
    assert got[0]["translation"].strip() and got[1]["translation"] == "" and got[2]["translation"].strip()


def test_each_line_is_written_before_the_next_one_is_read(marian_dir):
    """A real pipe: line 1's translation comes out while stdin is still open and line 2 unsent."""
    import select

    proc = subprocess.Popen(
        [sys.executable, "-m", "gptcli", "translate", "--to", "fr", "-m", str(marian_dir), "-t", "6"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    try:
        proc.stdin.write(b"Hello world.\n")
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "no output for line 1 while stdin stayed open"
        first = proc.stdout.readline()
        assert first.endswith(b"\n")
        proc.stdin.write(b"\nThe cat is black.\n")
        proc.stdin.close()
        rest = proc.stdout.read()
        assert proc.wait(timeout=60) == 0
        assert len(rest.splitlines()) == 2 and rest.splitlines()[0] == b""
    finally:
        proc.kill()
