#!/usr/bin/env bash
# Rebuild the bundled English→French model (gptcli/bundled/tiny-en-fr) from scratch:
#
#   1. split ../shared/data/eng-fra-76k.txt (Tatoeba, CC-BY 2.0 FR) by distinct English sentence
#      (recipes/split_en_fr.py, seed 0): 2,000 English sentences with all their French references
#      are the test split (benchmarks/data/eng-fra-test.tsv), 300 more the dev split; every English
#      sentence of benchmarks/data/eng-fra-heldout.tsv and benchmarks/data/en-fr-everyday.tsv is
#      kept out too; the rest become `English: …\nFrench: …` training documents;
#   2. `gptcli train` a small Llama-style decoder (6 layers, 256 wide, dropout 0.1) and its
#      4,096-token BPE on them, one run;
#   3. bundle it (float16 safetensors, card, data licence; the card records the longest
#      training source so `translate` can warn about sentences far beyond it);
#   4. score it with `gptcli translate --references` on the test split, eng-fra-heldout.tsv
#      and the self-written everyday set (BLEU, chrF, exact matches), and the dev split
#      at every checkpoint (the learning curve).
#
# Usage: [STEPS=7000] [MODEL=folder] recipes/make_en_fr.sh [WORKDIR]
#        (default WORKDIR /tmp/gptcli-en-fr; training about 70 minutes on one thread of a quiet
#        2-core machine, scoring about 10 more)
# Deterministic: fixed split and training seeds (same machine and versions give the same weights).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python}"
GPTCLI="${GPTCLI:-gptcli}"
DATA="${DATA:-$ROOT/../shared/data/eng-fra-76k.txt}"
WORK="${1:-/tmp/gptcli-en-fr}"
MODEL="${MODEL:-$ROOT/gptcli/bundled/tiny-en-fr}"  # MODEL=/tmp/x for a trial run
BENCH="$ROOT/benchmarks/data"
STEPS="${STEPS:-7000}"
BUNDLE_FROM="$WORK/run"
export HF_HUB_OFFLINE=1 GPTCLI_CACHE_DIR="$WORK/cache"
mkdir -p "$WORK"

# 1. split
"$PYTHON" "$ROOT/recipes/split_en_fr.py" "$DATA" "$WORK" --test "$BENCH/eng-fra-test.tsv" \
    --exclude "$BENCH/eng-fra-heldout.tsv" --exclude "$BENCH/en-fr-everyday.tsv" --test-size 2000 --dev-size 300

# 2. train: a 6-layer, 256-wide Llama-style decoder (RMSNorm, rotary positions, SwiGLU; 5.72 M
# parameters with the 4,096-token vocabulary, tied embeddings). Sentences are short (at most 30
# characters of English), so 64-token blocks hold two or three pairs each. 7,000 steps are ~9 passes
# over the training pairs: attention dropout 0.1 keeps the model from memorising them.
# One thread: on a 2-core machine a second one gains little for a model this small.
"$GPTCLI" train "$WORK/train.txt" --val-data "$WORK/dev.txt" --out "$WORK/run" --overwrite \
    --arch llama --n-layer 6 --n-embd 256 --n-head 8 --block-size 64 --dropout 0.1 --vocab-size 4096 \
    --steps "$STEPS" --batch-size 32 --lr 2e-3 --min-lr 5e-5 --warmup 200 --eval-every 500 --eval-batches 8 \
    --save-every 500 --keep-checkpoints 30 --seed 1337 --device cpu --threads 1

# 3. bundle: the card template plus the longest English training sentence, in tokens and characters.
"$PYTHON" - "$ROOT/recipes/cards/tiny-en-fr.json" "$BUNDLE_FROM" "$WORK/train.txt" "$WORK/card.json" <<'PY'
import json, sys
from tokenizers import Tokenizer
template, run, train, out = sys.argv[1:]
tok = Tokenizer.from_file(f"{run}/tokenizer.json")
english = {line[len("English: "):] for line in open(train, encoding="utf-8").read().splitlines()
           if line.startswith("English: ")}
by_tokens = max(english, key=lambda s: (len(tok.encode(s, add_special_tokens=False).ids), s))
card = json.load(open(template, encoding="utf-8"))
card["longest_training_source"] = {
    "tokens": len(tok.encode(by_tokens, add_special_tokens=False).ids),
    "characters": max(len(s) for s in english),
    "sentence": by_tokens,
}
json.dump(card, open(out, "w", encoding="utf-8"), indent=2, ensure_ascii=False)
PY
"$PYTHON" "$ROOT/recipes/bundle_model.py" "$BUNDLE_FROM" "$MODEL" --card "$WORK/card.json" \
    --license-file "$ROOT/recipes/cards/tiny-en-fr-LICENSE.txt"

# 4. score (greedy, the runtime's default dtype), then the dev split at every checkpoint.
for set in eng-fra-test eng-fra-heldout en-fr-everyday; do
    "$GPTCLI" translate --references "$BENCH/$set.tsv" -m "$MODEL" --from en --to fr --threads 1 \
        --json -o "$WORK/$set.fr.txt" | tee "$WORK/$set.score.json"
done
for ckpt in "$WORK"/run/checkpoints/step-*; do
    printf '%s ' "$ckpt"
    "$GPTCLI" translate --references "$WORK/dev.tsv" -m "$ckpt" --from en --to fr --threads 1 --json
done | tee "$WORK/curve.txt"
