"""The tiny-en-fr recipe's split: by distinct English sentence, deterministic, nothing held out leaks into training."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
DATA = ROOT / "benchmarks" / "data"


def english(path: Path) -> set[str]:
    return {row.split("\t")[0] for row in path.read_text(encoding="utf-8").splitlines()}


def split(tmp_path: Path, data: Path, name: str, *extra: str) -> Path:
    work = tmp_path / name
    argv = [str(data), str(work), "--test", str(work / "test.tsv"), "--test-size", "3", "--dev-size", "2", *extra]
    old = sys.argv
    sys.argv = ["split_en_fr.py", *argv]
    try:
        runpy.run_path(str(ROOT / "recipes" / "split_en_fr.py"), run_name="__main__")
    finally:
        sys.argv = old
    return work


def test_split_keeps_every_reference_and_leaks_nothing(tmp_path, capsys):
    rows = [(f"Sentence {i}.", f"Phrase {i}{suffix}.") for i in range(12) for suffix in ("", " bis")]
    data = tmp_path / "pairs.txt"
    data.write_text("".join(f"{en}\t{fr}\tattribution\n" for en, fr in rows), encoding="utf-8")
    kept_out = tmp_path / "kept.tsv"
    kept_out.write_text("Sentence 0.\tPhrase 0.\n", encoding="utf-8")
    work = split(tmp_path, data, "a", "--exclude", str(kept_out))
    test, dev = english(work / "test.tsv"), english(work / "dev.tsv")
    train = work / "train.txt"
    trained = {line[len("English: ") :] for line in train.read_text().splitlines() if line.startswith("English: ")}
    assert (len(test), len(dev), len(trained)) == (3, 2, 6)
    assert not trained & (test | dev | {"Sentence 0."}) and "Sentence 0." not in test | dev
    assert len((work / "test.tsv").read_text().splitlines()) == 6  # both references of each test sentence
    assert train.read_text().count("<|endoftext|>") == 2 * 6 - 1
    again = split(tmp_path, data, "b", "--exclude", str(kept_out))
    assert (again / "train.txt").read_bytes() == train.read_bytes()
    assert (again / "test.tsv").read_bytes() == (work / "test.tsv").read_bytes()


def test_committed_scoring_sets_are_disjoint():
    test, heldout, everyday = (
        english(DATA / n) for n in ("eng-fra-test.tsv", "eng-fra-heldout.tsv", "en-fr-everyday.tsv")
    )
    assert len(test) == 2000 and len(everyday) >= 30
    assert not test & heldout and not test & everyday and not heldout & everyday
