"""`gptcli eval` on corpora larger than memory: documents scored a chunk at a time, `--per-doc` records
written as each document finishes, and tokens read back from the token cache with the same numbers."""

import json
import math
import random

import pytest
from tiny import CORPUS

from gptcli import tokcache
from gptcli.evaluation import perplexity

EOT = "<|endoftext|>"


def corpus_file(tmp_path, n=12, name="corpus.txt"):
    """Documents of different lengths (several windows of the tiny models' 64 positions for some),
    with non-ASCII text so byte counts matter, separated the TinyStories way."""
    rng = random.Random(n)
    docs = [" ".join(rng.choice(CORPUS) for _ in range(rng.randint(1, 12))) for _ in range(n)]
    path = tmp_path / name
    path.write_text(f"\n{EOT}\n".join(docs) + "\n", encoding="utf-8")
    return path


def test_per_doc_record_is_written_before_the_next_document_is_scored(cli, gpt2_dir, tmp_path, monkeypatch):
    """With a corpus of many chunks (one document each here), the record of document 1 reaches stdout
    (flushed) before document 2 is scored; the records are in document order, and the same as one chunk."""
    from gptcli.cli.output import Output

    data = corpus_file(tmp_path, 5)
    whole = cli("eval", data, "-m", gpt2_dir, "--per-doc", "--dtype", "float32")
    assert whole.exit_code == 0, whole.stderr

    events = []
    real_score, real_record = perplexity._score, Output.record

    def score(lm, items, batch_size, progress):
        events.append(("score", [it.doc.id for it in items]))
        return real_score(lm, items, batch_size, progress)

    def record(self, rec, *, flush=True):
        events.append(("record", rec["id"], flush))
        return real_record(self, rec, flush=flush)

    monkeypatch.setattr(perplexity, "CHUNK_TOKENS", 1)
    monkeypatch.setattr(perplexity, "_score", score)
    monkeypatch.setattr(Output, "record", record)
    r = cli("eval", data, "-m", gpt2_dir, "--per-doc", "--dtype", "float32")
    assert r.exit_code == 0, r.stderr
    ids = [f"{data}#{i}" for i in range(1, 6)]
    assert [e[1] for e in events if e[0] == "score"] == [[i] for i in ids]  # one document per chunk
    assert events.index(("record", ids[0], True)) < events.index(("score", [ids[1]]))
    chunked, one = r.json_lines(), whole.json_lines()
    assert [rec["id"] for rec in chunked] == ids
    for a, b in zip(chunked, one):
        assert (a["tokens"], a["bytes"]) == (b["tokens"], b["bytes"])
        assert a["nll"] == pytest.approx(b["nll"], rel=1e-6)


def test_eval_from_a_prepared_cache_equals_eval_of_the_raw_text(cli, gpt2_dir, tmp_path, monkeypatch):
    """`gptcli prepare` with the model's tokenizer, then `eval --cache`: the tokens come from the cache
    (the tokenizer only checks the first document, and finds the one document --max-tokens cuts), and
    every per-document record and the summary are the same as tokenizing the text, to the last digit."""
    data, cache = corpus_file(tmp_path, 30), tmp_path / "cache"
    r = cli("prepare", data, "--tokenizer", gpt2_dir, "--cache", cache, "--json")
    assert r.exit_code == 0, r.stderr
    calls = []
    real = perplexity._encode
    monkeypatch.setattr(perplexity, "_encode", lambda tok, texts: calls.append(len(texts)) or real(tok, texts))

    for extra in ([], ["--max-tokens", "700"]):
        base = ["eval", data, "-m", gpt2_dir, "--dtype", "float32", *extra]
        calls.clear()
        raw = cli(*base, "--per-doc")
        assert raw.exit_code == 0, raw.stderr
        assert sum(calls) >= (30 if not extra else 2)  # tokenized as read
        calls.clear()
        cached = cli(*base, "--per-doc", "--cache", cache)
        assert cached.exit_code == 0, cached.stderr
        assert sum(calls) == (1 if not extra else 2), calls  # the first-document check (+ the cut document)
        assert "tokenizing" not in cached.stderr  # a cache hit: nothing is tokenized into it
        assert cached.stdout == raw.stdout
        if extra:
            recs = cached.json_lines()
            assert sum(rec["tokens"] for rec in recs) == 700 and recs[-1].get("truncated") is True
        summary = [json.loads(cli(*base, "--json", *c).stdout) for c in ([], ["--cache", cache])]
        for s in summary:
            s.pop("tokens_per_s"), s.pop("elapsed_s")
        assert summary[0] == summary[1]


def test_eval_cache_skips_blank_records_and_keeps_ids(cli, gpt2_dir, tmp_path):
    """JSON Lines with blank texts (the cache holds only non-blank documents) and record ids: the cached
    run pairs each document with its own tokens (same records as without the cache)."""
    rows = [{"id": f"r{i}", "text": t} for i, t in enumerate([CORPUS[0], "   ", CORPUS[6] * 3, "", CORPUS[3]])]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    raw = cli("eval", data, "-m", gpt2_dir, "--per-doc", "--dtype", "float32")
    cached = cli("eval", data, "-m", gpt2_dir, "--per-doc", "--dtype", "float32", "--cache", tmp_path / "c")
    assert raw.exit_code == 0 and cached.exit_code == 0, cached.stderr
    assert "tokenizing the eval data" in cached.stderr  # built on first use with --cache
    assert cached.stdout == raw.stdout
    assert [r["id"] for r in cached.json_lines()] == ["r0", "r1", "r2", "r3", "r4"]
    again = cli("eval", data, "-m", gpt2_dir, "--per-doc", "--dtype", "float32", "--cache", tmp_path / "c")
    assert again.stdout == raw.stdout and "tokenizing" not in again.stderr


def test_a_cache_whose_tokens_do_not_match_is_not_used(cli, gpt2_dir, tmp_path, monkeypatch):
    """A cache entry that does not hold these documents' tokens is caught by the first-document check
    and the text is tokenized instead, with a note: never scores of the wrong tokens."""
    from gptcli.loading import load_tokenizer

    data = corpus_file(tmp_path, 6)
    tok = load_tokenizer(gpt2_dir)
    entry = tokcache.ensure([data], tok, "text", root=tmp_path / "c")
    raw = cli("eval", data, "-m", gpt2_dir, "--json", "--dtype", "float32")
    # the cache's tokens of the first document changed on disk (sizes and manifest left as they were)
    tokens = entry.tokens()
    damaged = tokens.copy()
    damaged[0] = (int(damaged[0]) + 1) % 300
    damaged.tofile(entry.folder / tokcache.TOKENS)
    r = cli("eval", data, "-m", gpt2_dir, "--json", "--dtype", "float32", "--cache", tmp_path / "c")
    assert r.exit_code == 0, r.stderr
    assert "does not match" in r.stderr
    a, b = json.loads(r.stdout), json.loads(raw.stdout)
    assert (a["tokens"], a["bytes"], a["nll"]) == (b["tokens"], b["bytes"], b["nll"])


def test_streamed_totals_add_up_exactly_like_fsum():
    """The summary keeps no per-document list: its NLL sum is exactly math.fsum of the documents' sums."""
    from gptcli.evaluation import DocScore, ModelScore

    rng = random.Random(0)
    values = [rng.uniform(0, 10) * 10 ** rng.randint(-8, 8) for _ in range(5000)]
    score = ModelScore(model="m", device="cpu", dtype="float32", context=64, stride=64)
    for i, v in enumerate(values):
        score.add(DocScore(id=str(i), source="s", tokens=3, nll_sum=v, bytes=5))
    score.add(DocScore(id="x", source="s", skipped="no token to score"))
    assert score.nll_sum == math.fsum(values) and score.nll_sum != sum(values)
    assert (score.documents, score.skipped, score.tokens, score.bytes) == (5000, 1, 15000, 25000)
    assert score.docs == []


def test_cache_reader_gives_each_documents_tokens_across_blocks(gpt2_dir, tmp_path, monkeypatch):
    """The reader behind `eval --cache` reads tokens.bin in blocks: documents that straddle two blocks,
    and documents longer than a block (read through the memmap), come back exactly as tokenized."""
    from gptcli.data import DocumentStream
    from gptcli.errors import GptcliError
    from gptcli.loading import load_tokenizer

    tok = load_tokenizer(gpt2_dir)
    data = corpus_file(tmp_path, 20)
    entry = tokcache.ensure([data], tok, "text", root=tmp_path / "c")
    monkeypatch.setattr(perplexity._CacheReader, "BLOCK", 40)
    monkeypatch.setattr(perplexity._CacheReader, "END_BLOCK", 3)  # document ends read 3 at a time
    reader = perplexity._CacheReader(entry)
    want = [tok(d.text, add_special_tokens=False)["input_ids"] for d in DocumentStream([data])]
    assert min(map(len, want)) < 40 < max(map(len, want))
    assert [[int(t) for t in reader.next()] for _ in want] == want
    with pytest.raises(GptcliError, match="fewer documents"):
        reader.next()
