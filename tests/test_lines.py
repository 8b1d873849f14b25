"""Lines end at "\\n" (or "\\r\\n") only, in every reader of user data.

U+2028, U+2029, U+0085, form feeds and the other characters `str.splitlines()` also splits at are
valid inside a JSON string and a line of text; a reader that split there cut one record in two
(a "not valid JSON" error) or one input line into two outputs.
"""

import json

# Every character str.splitlines() treats as a line end, other than \n and \r.
INNER = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def test_generate_file_keeps_records_and_lines_whole(cli, gpt2_dir, tmp_path):
    prompts = [f"Max{c}liked" for c in INNER]
    f = tmp_path / "p.jsonl"
    f.write_text(
        "\n".join(json.dumps({"id": i, "prompt": p}, ensure_ascii=False) for i, p in enumerate(prompts)) + "\n",
        encoding="utf-8",
    )
    r = cli("generate", "--file", f, "-m", gpt2_dir, "-t", 1, "--json", "--seed", 1)
    assert r.exit_code == 0, r.stderr
    assert [x["id"] for x in r.json_lines()] == list(range(len(prompts)))
    f = tmp_path / "p.txt"
    f.write_text("\r\n".join(prompts) + "\r\n", encoding="utf-8")
    r = cli("generate", "--file", f, "-m", gpt2_dir, "-t", 1, "--json", "--seed", 1)
    assert r.exit_code == 0, r.stderr
    assert [(x["prompt"], x["line"]) for x in r.json_lines()] == [(p, i + 1) for i, p in enumerate(prompts)]


def test_eval_jsonl_records_with_separator_characters(cli, gpt2_dir, tmp_path):
    f = tmp_path / "docs.jsonl"
    docs = [f"Tom and Sue went to the sea.{c}They found a shell." for c in INNER]
    f.write_text("\n".join(json.dumps({"text": d}, ensure_ascii=False) for d in docs) + "\n", encoding="utf-8")
    r = cli("eval", f, "-m", gpt2_dir, "--json")
    assert r.exit_code == 0, r.stderr
    (rec,) = r.json_lines()
    assert rec["documents"] == len(docs)


def test_translate_file_gives_one_output_line_per_input_line(cli, marian_dir, tmp_path):
    lines = [f"The cat{c}is black." for c in INNER]
    f = tmp_path / "src.txt"
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    r = cli("translate", "--file", f, "--to", "fr", "-m", marian_dir, "-t", 4, env={"GPTCLI_THREADS": "1"})
    assert r.exit_code == 0, r.stderr
    assert r.stdout.endswith("\n") and len(r.stdout[:-1].split("\n")) == len(lines)
    f = tmp_path / "src.jsonl"
    f.write_text(
        "\n".join(json.dumps({"id": i, "text": t}, ensure_ascii=False) for i, t in enumerate(lines)) + "\n",
        encoding="utf-8",
    )
    r = cli("translate", "--file", f, "--to", "fr", "-m", marian_dir, "-t", 4, env={"GPTCLI_THREADS": "1"})
    assert r.exit_code == 0, r.stderr
    assert [(x["id"], x["text"]) for x in r.json_lines()] == list(enumerate(lines))


def test_tokenizer_training_encodes_like_one_long_encode(tmp_path):
    """`encode_documents` encodes line by line for speed; its lines must end at "\\n" only, or
    the pre-tokenizer sees a different split and the tokens differ from one long encode."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from gptcli.training.tokenizer import encode_documents

    corpus = [f"the {c} sea and {c}the sky{c}.\n" for c in INNER] * 30
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(
        corpus, trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    texts = ["".join(corpus[: len(INNER)])]
    assert encode_documents(fast, texts) == [tok.encode(texts[0], add_special_tokens=False).ids]
