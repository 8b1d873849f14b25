"""The token cache (gptcli/tokcache.py): exact tokens however the text is cut, reuse, rebuilds and faults."""

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gptcli import data, tokcache
from gptcli.errors import GptcliError, InputError
from gptcli.training import tokenizer as toks


def _tricky_text(seed: int, n_lines: int = 1500) -> str:
    """Lines that end in spaces or tabs, blank lines, runs of newlines, CRLF, U+2028, digits, accents."""
    rng = random.Random(seed)
    words = [
        "the",
        "cat",
        " sat",
        "on",
        "théâtre",
        "42",
        "x2028\u2028y",
        "tab\there",
        "it's",
        "don't",
        "ümlaut",
        "日本語",
        "  spaced",
        "end.",
        "!!",
        "\u0085",
        "\x0c",
    ]
    ends = ["\n", " \n", "  \n", "\t\n", "\n\n", "\n\n\n", "\r\n", " \n \n", "\n "]
    lines = []
    for _ in range(n_lines):
        lines.append(" ".join(rng.choice(words) for _ in range(rng.randint(0, 12))) + rng.choice(ends))
    return "".join(lines)


def _whole(tok, texts):
    eot = tok.eos_token_id
    out = []
    for t in texts:
        out.extend(tok.backend_tokenizer.encode(t, add_special_tokens=False).ids)
        out.append(eot)
    return out


@pytest.fixture
def small_pieces(monkeypatch):
    """Tiny read, piece and batch sizes: a small file is cut in hundreds of places."""
    monkeypatch.setattr(data, "READ_BYTES", 997)
    monkeypatch.setattr(tokcache, "PIECE_CHARS", 61)
    monkeypatch.setattr(tokcache, "BATCH_CHARS", 700)


@pytest.mark.parametrize("kind", ["bpe", "char", "bytes"])
def test_cached_stream_equals_whole_text_tokenization(tmp_path, small_pieces, kind):
    plain = _tricky_text(1)
    separated = "\n<|endoftext|>\n".join(_tricky_text(s, 40) for s in range(2, 30)) + "\n<|endoftext|>\n  \n"
    records = "".join(json.dumps({"text": _tricky_text(s, 5)}) + "\n" for s in range(40, 60))
    (tmp_path / "a.txt").write_text(plain, encoding="utf-8", newline="")
    (tmp_path / "b.txt").write_text(separated, encoding="utf-8", newline="")
    (tmp_path / "c.jsonl").write_text(records, encoding="utf-8")
    import csv

    with open(tmp_path / "d.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerows([[i, _tricky_text(100 + i, 3)] for i in range(5)] + [[9, " "]])
    paths = [tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.jsonl", tmp_path / "d.csv"]
    from gptcli.training.runner import load_texts

    texts = load_texts([str(p) for p in paths], "text")
    tok = toks.make_tokenizer(kind, texts, 400)
    entry = tokcache.ensure(paths, tok, "text", root=tmp_path / "cache")
    want = _whole(tok, texts)
    assert entry.tokens().tolist() == want
    assert entry.n_documents == len(texts)
    ends = entry.doc_ends().tolist()
    assert ends[-1] == len(want) and all(want[e - 1] == tok.eos_token_id for e in ends)


def test_line_cuts_keep_the_bpe_pre_tokens_of_trailing_spaces():
    """Cuts fall before a line break that follows a non-space character: never inside "  \\n", where
    the pre-tokenizer's split depends on what follows."""
    pieces, rest = tokcache.cut_pieces("ab  \ncd\n\nef\r\ngh", "line", final=False, target=1)
    assert pieces == ["ab  \ncd", "\n\nef"] and rest == "\r\ngh"


def test_reuse_then_rebuild_with_a_note_when_source_or_tokenizer_changes(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("hello world\n" * 50)
    notes = []
    tok = toks.build_bytes()
    first = tokcache.ensure([src], tok, "text", root=tmp_path / "c", note=notes.append)
    built = (first.folder / tokcache.MANIFEST).stat().st_mtime_ns
    again = tokcache.ensure([src], tok, "text", root=tmp_path / "c", note=notes.append)
    assert (again.folder / tokcache.MANIFEST).stat().st_mtime_ns == built and notes == []
    src.write_text("hello wurld\n" * 50)  # same size, possibly the same mtime: the hash tells
    changed = tokcache.ensure([src], tok, "text", root=tmp_path / "c", note=notes.append)
    assert "a.txt changed" in notes[-1]
    assert changed.n_tokens == 601
    char = toks.build_char(["hello wurld\n"])
    other = tokcache.ensure([src], char, "text", root=tmp_path / "c", note=notes.append)
    assert other.folder != changed.folder and other.n_tokens == 601  # another tokenizer: its own entry


def test_truncated_token_file_is_detected_and_rebuilt(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("some text here\n" * 100)
    tok = toks.build_bytes()
    entry = tokcache.ensure([src], tok, "text", root=tmp_path / "c")
    want = entry.tokens().tolist()
    with open(entry.folder / tokcache.TOKENS, "r+b") as f:
        f.truncate(100)
    notes = []
    again = tokcache.ensure([src], tok, "text", root=tmp_path / "c", note=notes.append)
    assert "tokens.bin has 100 bytes instead of" in notes[0]
    assert again.tokens().tolist() == want


def test_uint32_when_the_vocabulary_exceeds_65536(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<|endoftext|>": 0, **{f"w{i}": i + 1 for i in range(70_000)}}
    inner = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    inner.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = toks._wrap(inner)
    src = tmp_path / "a.txt"
    src.write_text("w1 w69999 w65536\nw3\n")
    entry = tokcache.ensure([src], tok, "text", root=tmp_path / "c")
    assert entry.manifest["dtype"] == "uint32"
    assert entry.tokens().tolist() == [2, 70000, 65537, 4, 0]


def test_empty_shard_among_files_and_all_empty(tmp_path):
    (tmp_path / "a.txt").write_text("first\n")
    (tmp_path / "b.txt").write_text("")
    (tmp_path / "c.txt").write_text("third\n")
    tok = toks.build_bytes()
    entry = tokcache.ensure([tmp_path / n for n in ("a.txt", "b.txt", "c.txt")], tok, "text", root=tmp_path / "c")
    assert entry.n_documents == 2
    with pytest.raises(InputError, match="holds no text"):
        tokcache.ensure([tmp_path / "b.txt"], tok, "text", root=tmp_path / "c")
    assert not list((tmp_path / "c").rglob("*.tmp-*"))  # nothing half-written stays


def test_invalid_utf8_reports_file_and_byte_offset(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "READ_BYTES", 1000)
    src = tmp_path / "bad.txt"
    src.write_bytes(b"good line\n" * 5000 + b"x\xffy\n")
    with pytest.raises(InputError, match=r"bad\.txt is not valid UTF-8 \(bad byte at offset 50001\)"):
        tokcache.ensure([src], toks.build_bytes(), "text", root=tmp_path / "c")
    assert not list((tmp_path / "c").rglob("*.tmp-*"))


def test_full_disk_gives_a_clear_error_and_removes_the_temporary_folder(tmp_path, monkeypatch):
    import errno

    src = tmp_path / "a.txt"
    src.write_text("text\n" * 100)

    def no_space(fd):  # the disk fills while the token file is flushed
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tokcache.os, "fsync", no_space)
    with pytest.raises(GptcliError, match="cannot write the token cache .*No space left on device"):
        tokcache.ensure([src], toks.build_bytes(), "text", root=tmp_path / "c")
    assert not list((tmp_path / "c").rglob("*.tmp-*")) and not list((tmp_path / "c").rglob(tokcache.MANIFEST))


BUILDER = """
import sys, time
from pathlib import Path
from gptcli import data, tokcache
from gptcli.training import tokenizer as toks
tokcache.BATCH_CHARS = 2000
real = tokcache.encode_stream
def slow(tok, pieces, write):
    def w(a, e):
        write(a, e); print("wrote", flush=True); time.sleep(float(sys.argv[3]))
    real(tok, pieces, w)
tokcache.encode_stream = slow
e = tokcache.ensure([Path(sys.argv[1])], toks.build_bytes(), "text", root=Path(sys.argv[2]), note=lambda m: print("note", m))
print("done", e.n_tokens, flush=True)
"""


def _builder(tmp_path, delay):
    return subprocess.Popen(
        [sys.executable, "-c", BUILDER, str(tmp_path / "a.txt"), str(tmp_path / "c"), str(delay)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    )


def test_sigkill_mid_build_leaves_no_cache_that_is_used(tmp_path):
    (tmp_path / "a.txt").write_text("line of text\n" * 2000)
    p = _builder(tmp_path, 5)
    assert p.stdout.readline().strip() == "wrote"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert list((tmp_path / "c").rglob("*.tmp-*")) and not list((tmp_path / "c").rglob(tokcache.MANIFEST))
    entry = tokcache.ensure([tmp_path / "a.txt"], toks.build_bytes(), "text", root=tmp_path / "c")
    assert entry.n_tokens == 26001 and not list((tmp_path / "c").rglob("*.tmp-*"))


def test_two_builders_at_once_build_once_and_both_get_a_valid_cache(tmp_path):
    (tmp_path / "a.txt").write_text("line of text\n" * 2000)
    first = _builder(tmp_path, 0.05)
    assert first.stdout.readline().strip() == "wrote"  # the first one holds the lock now
    second = _builder(tmp_path, 0.05)
    out2 = second.communicate(timeout=60)[0]
    out1 = first.communicate(timeout=60)[0]
    assert "done 26001" in out1 and "done 26001" in out2
    assert "wrote" not in out2  # it waited, then reused the first one's cache


# ---------------------------------------------------------------- train and prepare through the CLI


def _manifests(cache: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in cache.rglob(tokcache.MANIFEST)}


def test_train_tokenizes_once_then_reuses_on_a_second_run_and_on_resume(tmp_path):
    from test_train_support import TINY, cli, corpus

    data, cache = corpus(tmp_path), tmp_path / "cache"
    args = ["train", data, *TINY, "--steps", "4", "--save-every", "2", "--cache", cache]
    code, out1, err1 = cli(*args, "--out", tmp_path / "a", "--json")
    assert code == 0, err1
    built = _manifests(cache)
    assert len(built) == 1 and len(list(cache.rglob("tokenizer-bpe-*.json"))) == 1
    code, out2, err2 = cli(*args, "--out", tmp_path / "b", "--json")
    assert code == 0, err2
    assert _manifests(cache) == built and "rebuilding" not in err2
    assert json.loads(out1)["final_loss"] == json.loads(out2)["final_loss"]  # same tokenizer, tokens, order
    code, _, err3 = cli("train", "--out", tmp_path / "a", "--resume", "auto", "--steps", "6")
    assert code == 0, err3
    assert _manifests(cache) == built and "rebuilding" not in err3  # the checkpoint's tokenizer hits the same entry


def test_train_rebuilds_with_a_note_when_the_data_changed(tmp_path):
    from test_train_support import TINY, cli, corpus

    data, cache = corpus(tmp_path), tmp_path / "cache"
    tok = tmp_path / "tok"
    toks.build_bytes().save_pretrained(tok)
    args = ["train", data, *TINY, "--tokenizer", tok, "--steps", "2", "--cache", cache]
    assert cli(*args, "--out", tmp_path / "a")[0] == 0
    corpus(tmp_path, lines=500)
    code, _, err = cli(*args, "--out", tmp_path / "b")
    assert code == 0, err
    assert "token cache for the training data: rebuilding it (" in err and "stories.txt changed)" in err


def test_train_from_stdin_still_works_and_leaves_no_cache_behind(tmp_path, monkeypatch):
    from test_train_support import TINY, corpus

    from gptcli.cli.app import run

    text = corpus(tmp_path).read_text()
    monkeypatch.setattr("sys.stdin", __import__("io").TextIOWrapper(__import__("io").BytesIO(text.encode())))
    cache = tmp_path / "cache"
    assert (
        run(
            [
                str(a)
                for a in [
                    "train",
                    "-",
                    *TINY,
                    "--tokenizer-type",
                    "char",
                    "--steps",
                    "2",
                    "--cache",
                    cache,
                    "--out",
                    tmp_path / "a",
                ]
            ]
        )
        == 0
    )
    assert not cache.exists() or not list(cache.rglob(tokcache.MANIFEST))


def test_prepare_then_train_starts_from_the_cache(tmp_path, cli):
    from test_train_support import TINY, corpus

    data, val, cache = corpus(tmp_path), corpus(tmp_path, 60, "val.txt", seed=5), tmp_path / "cache"
    r = cli("prepare", data, "--val-data", val, "--vocab-size", "300", "--cache", cache, "--json")
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["data"]["documents"] == 1 and summary["data"]["dtype"] == "uint16"
    assert summary["val_data"]["tokens"] > 0 and "tokenizing the training data" in r.stderr  # progress: stderr
    built = _manifests(cache)
    assert len(built) == 2
    r = cli("train", data, "--val-data", val, *TINY, "--steps", "2", "--cache", cache, "--out", tmp_path / "run")
    assert r.exit_code == 0, r.stderr
    assert _manifests(cache) == built


def test_prepare_refuses_stdin(tmp_path, cli):
    r = cli("prepare", "-", "--cache", tmp_path / "c", stdin="text\n")
    assert r.exit_code == 2 and "stdin ('-') cannot be cached" in r.stderr


def test_bpe_tokenizer_trains_on_a_bounded_deterministic_sample(tmp_path):
    """Only the first --tokenizer-sample-mb of documents train the BPE: a word seen only later gets no merges."""
    early = "".join(f"the cat sat on the mat {i}\n<|endoftext|>\n" for i in range(200))
    late = "".join("zyzzyva quokka zyzzyva quokka\n<|endoftext|>\n" for _ in range(200))
    (tmp_path / "a.txt").write_text(early + late)
    paths = [tmp_path / "a.txt"]
    sample = tokcache.sample_texts(paths, "text", 2000)
    assert 2000 <= sum(map(len, sample)) < 2100 and sample == tokcache.sample_texts(paths, "text", 2000)
    bounded = tokcache.cached_tokenizer(paths, "text", "bpe", 300, 2000, tmp_path / "c")
    full = tokcache.cached_tokenizer(paths, "text", "bpe", 300, 10**9, tmp_path / "c")
    assert len(bounded.tokenize(" zyzzyva")) > len(full.tokenize(" zyzzyva"))
    again = tokcache.cached_tokenizer(paths, "text", "bpe", 300, 2000, tmp_path / "c")  # from the cache
    assert tokcache.tokenizer_fingerprint(again) == tokcache.tokenizer_fingerprint(bounded)


def test_ctrl_c_mid_build_removes_the_partial_cache(tmp_path, monkeypatch):
    src = tmp_path / "a.txt"
    src.write_text("line of text\n" * 2000)
    monkeypatch.setattr(tokcache, "BATCH_CHARS", 1000)
    real = tokcache.encode_stream

    def interrupted(tok, pieces, write):
        def w(arr, ends):
            write(arr, ends)
            raise KeyboardInterrupt  # Ctrl-C after the first batch is on disk

        real(tok, pieces, w)

    monkeypatch.setattr(tokcache, "encode_stream", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tokcache.ensure([src], toks.build_bytes(), "text", root=tmp_path / "c")
    assert not list((tmp_path / "c").rglob("*.tmp-*")) and not list((tmp_path / "c").rglob(tokcache.TOKENS))
    monkeypatch.setattr(tokcache, "encode_stream", real)
    assert tokcache.ensure([src], toks.build_bytes(), "text", root=tmp_path / "c").n_tokens == 26001


def test_eval_max_tokens_reads_only_the_documents_it_scores(tmp_path, cli, gpt2_dir, monkeypatch):
    """A huge file: --max-tokens stops reading early (a bad byte far past the sample is never reached),
    and the numbers equal those of the same documents in a small file."""
    monkeypatch.setattr(data, "READ_BYTES", 4096)
    stories = "".join(f"Story {i}: the cat sat on the mat and looked at the bird.\n<|endoftext|>\n" for i in range(400))
    (tmp_path / "big.txt").write_bytes(stories.encode() + b"bad \xff byte\n")
    (tmp_path / "small.txt").write_text(stories[:3000])
    r = cli("eval", tmp_path / "big.txt", "-m", gpt2_dir, "--max-tokens", "200", "--json")
    assert r.exit_code == 0, r.stderr
    small = cli("eval", tmp_path / "small.txt", "-m", gpt2_dir, "--max-tokens", "200", "--json")
    a, b = json.loads(r.stdout), json.loads(small.stdout)
    assert a["tokens"] == b["tokens"] == 200 and a["nll"] == b["nll"]
    r = cli("eval", tmp_path / "big.txt", "-m", gpt2_dir, "--json")  # all of it: the bad byte, as before
    assert r.exit_code == 1 and "big.txt is not valid UTF-8 (bad byte at offset" in r.stderr


def test_finetune_on_plain_text_reads_the_token_cache_and_reuses_it(tmp_path, gpt2_dir):
    from test_train_support import cli, corpus

    data, cache = corpus(tmp_path), tmp_path / "cache"
    args = [
        "finetune",
        data,
        "-m",
        gpt2_dir,
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--block-size",
        "16",
        "--threads",
        "1",
        "--cache",
        cache,
    ]
    code, _, err = cli(*args, "--out", tmp_path / "a")
    assert code == 0, err
    built = _manifests(cache)
    assert len(built) == 1 and "text examples" in err
    code, _, err = cli(*args, "--out", tmp_path / "b")
    assert code == 0, err
    assert _manifests(cache) == built


def test_a_read_only_shared_cache_is_read_without_a_lock(tmp_path, monkeypatch):
    """A cluster's prepared cache mounted read-only: a valid entry is used, a missing one is a clear error."""
    src = tmp_path / "a.txt"
    src.write_text("shared text\n" * 10)
    tok = toks.build_bytes()
    entry = tokcache.ensure([src], tok, "text", root=tmp_path / "c")
    real_open = os.open

    def read_only(path, flags, *args):
        if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args)

    monkeypatch.setattr(tokcache.os, "open", read_only)
    assert tokcache.ensure([src], tok, "text", root=tmp_path / "c").folder == entry.folder
    real_mkdir = Path.mkdir

    def no_new_folders(self, *args, **kwargs):
        if self.is_dir():
            return real_mkdir(self, *args, **kwargs)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "mkdir", no_new_folders)
    with pytest.raises(GptcliError, match="cannot write the token cache .*Permission denied"):
        tokcache.ensure([src], toks.build_char(["shared text\n"]), "text", root=tmp_path / "c")


def test_a_cache_hit_does_not_read_the_corpus_again_for_run_json(tmp_path, monkeypatch):
    """run.json's data hash on a cache hit comes from the hash recorded when the cache was built (for
    a large file, whose cache fingerprint covers only its ends): the real SHA-256, without reading the
    file again. An entry from before those hashes gets them once, on its first hit."""
    import hashlib

    from test_train_support import TINY, cli, corpus

    from gptcli.training import manifest

    monkeypatch.setattr(tokcache, "HASH_WHOLE", 4096)  # the corpus counts as large
    data, cache = corpus(tmp_path, lines=2000), tmp_path / "cache"
    args = ["train", data, *TINY, "--steps", "1", "--cache", cache]
    assert cli(*args, "--out", tmp_path / "a")[0] == 0
    opened = []
    real_open = open
    monkeypatch.setattr(
        manifest, "open", lambda p, *a, **k: opened.append(str(p)) or real_open(p, *a, **k), raising=False
    )
    code, _, err = cli(*args, "--out", tmp_path / "b")
    assert code == 0, err
    assert opened == []  # the hash came from the cache manifest
    record = json.loads((tmp_path / "b" / "run.json").read_text())
    assert record["data"][0]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()

    (man_path,) = map(Path, _manifests(cache))
    man = json.loads(man_path.read_text())
    for s in man["sources"]:
        del s["content_sha256"]  # as an older gptcli wrote it
    man_path.write_text(json.dumps(man))
    hashed = []
    real_hash = tokcache.file_sha256
    monkeypatch.setattr(tokcache, "file_sha256", lambda p: hashed.append(Path(p)) or real_hash(p))
    assert cli(*args, "--out", tmp_path / "c")[0] == 0
    assert hashed == [data.resolve()]  # this once
    assert json.loads(man_path.read_text())["sources"][0]["content_sha256"] == record["data"][0]["sha256"]
    assert cli(*args, "--out", tmp_path / "d")[0] == 0
    assert hashed == [data.resolve()] and opened == []
    assert json.loads((tmp_path / "d" / "run.json").read_text())["data"] == record["data"]
