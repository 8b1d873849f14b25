"""Split the Tatoeba English–French pairs for the bundled translator, by distinct English sentence.

    python recipes/split_en_fr.py DATA WORKDIR --test benchmarks/data/eng-fra-test.tsv \
        --exclude benchmarks/data/eng-fra-heldout.tsv --exclude benchmarks/data/en-fr-everyday.tsv

Every English sentence of an --exclude file is kept out of everything (it is scored
elsewhere). Of the rest, a fixed-seed sample of --test-size English sentences, with all
their French references, is the test split and a further --dev-size the dev split
(WORKDIR/dev.tsv and dev.txt, for the learning curve and the validation loss); the remaining pairs become
WORKDIR/train.txt as `English: …\\nFrench: …` documents in a fixed-seed random order.
No English sentence of the test, dev or --exclude files appears in train.txt.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def read_pairs(path: Path) -> list[tuple[str, str]]:
    pairs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            cols = line.rstrip("\n").split("\t")
            if line.startswith("#") or len(cols) < 2 or not cols[0].strip() or not cols[1].strip():
                continue
            pairs.append((cols[0].strip(), cols[1].strip()))  # a third column (attribution) is dropped
    return pairs


def write_tsv(path: Path, pairs: list[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{en}\t{fr}\n" for en, fr in pairs)


def documents(pairs: list[tuple[str, str]]) -> str:
    """The pairs as `gptcli train` documents, in the bundled model's prompt format."""
    return "\n<|endoftext|>\n".join(f"English: {en}\nFrench: {fr}" for en, fr in pairs) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("work", type=Path)
    ap.add_argument("--test", type=Path, required=True)
    ap.add_argument("--exclude", type=Path, action="append", default=[])
    ap.add_argument("--test-size", type=int, default=2000)
    ap.add_argument("--dev-size", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    pairs = list(dict.fromkeys(read_pairs(args.data)))  # exact duplicate pairs once
    excluded = {en for path in args.exclude for en, _ in read_pairs(path)}
    english = sorted({en for en, _ in pairs} - excluded)
    rng = random.Random(args.seed)
    picked = rng.sample(english, k=args.test_size + args.dev_size)
    test_en, dev_en = set(picked[: args.test_size]), set(picked[args.test_size :])
    # Keep the data file's order (short to long) inside the scored splits.
    test = [p for p in pairs if p[0] in test_en]
    dev = [p for p in pairs if p[0] in dev_en]
    train = [p for p in pairs if p[0] not in test_en | dev_en | excluded]
    assert not {en for en, _ in train} & (test_en | dev_en | excluded)
    random.Random(args.seed + 1).shuffle(train)  # `gptcli train` validates on the end of the data

    args.work.mkdir(parents=True, exist_ok=True)
    write_tsv(args.test, test)
    write_tsv(args.work / "dev.tsv", dev)
    (args.work / "train.txt").write_text(documents(train), encoding="utf-8")
    (args.work / "dev.txt").write_text(documents(dev), encoding="utf-8")  # validation loss during training
    longest = max(train, key=lambda p: len(p[0]))
    summary = {
        "train_pairs": len(train),
        "train_english": len({en for en, _ in train}),
        "test_pairs": len(test),
        "test_english": len(test_en),
        "dev_pairs": len(dev),
        "dev_english": len(dev_en),
        "excluded_english": len(excluded),
        "longest_english_chars": len(longest[0]),
        "longest_english": longest[0],
    }
    (args.work / "split.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(summary, ensure_ascii=False))


if __name__ == "__main__":
    main()
