#!/usr/bin/env bash
# Rebuild the bundled English→French model (gptcli/bundled/tiny-en-fr) from scratch:
#
#   1. split ../shared/data/eng-fra.txt (Tatoeba, CC-BY 2.0 FR) by English sentence:
#      10% of the English sentences, with all their French translations, are held out
#      (benchmarks/data/eng-fra-heldout.tsv, kept in the repository for scoring);
#   2. write the other pairs as `English: …\nFrench: …` documents (the attribution column dropped);
#   3. train a small GPT on them with `gptcli train`;
#   4. copy the final model into the package with its card and licence;
#   5. score it on the held-out pairs with `gptcli translate --references`.
#
# Usage: [STEPS=800] [MODEL=folder] recipes/make_en_fr.sh [WORKDIR]   (default /tmp/gptcli-en-fr; about 12 minutes of one CPU core)
# Deterministic: fixed split seed and training seed (same machine and versions give the same weights).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DATA="${DATA:-$ROOT/../shared/data/eng-fra.txt}"
WORK="${1:-/tmp/gptcli-en-fr}"
MODEL="${MODEL:-$ROOT/gptcli/bundled/tiny-en-fr}"  # MODEL=/tmp/x for a trial run
HELDOUT="$ROOT/benchmarks/data/eng-fra-heldout.tsv"
STEPS="${STEPS:-800}"
mkdir -p "$WORK" "$(dirname "$HELDOUT")"

python - "$DATA" "$WORK/train.txt" "$HELDOUT" <<'PY'
import random, sys
data, train_path, heldout_path = sys.argv[1:]
pairs = []
with open(data, encoding="utf-8") as f:
    for line in f:
        cols = line.rstrip("\n").split("\t")
        if len(cols) >= 2 and cols[0].strip() and cols[1].strip():
            pairs.append((cols[0].strip(), cols[1].strip()))  # column 3 (attribution) dropped
english = sorted({en for en, _ in pairs})
held = set(random.Random(0).sample(english, k=round(len(english) * 0.10)))
train = [p for p in pairs if p[0] not in held]
test = [p for p in pairs if p[0] in held]
assert not {en for en, _ in train} & {en for en, _ in test}
random.Random(1).shuffle(train)  # `gptcli train` validates on the end of the data: make it a random sample
with open(train_path, "w", encoding="utf-8") as f:
    f.write("\n<|endoftext|>\n".join(f"English: {en}\nFrench: {fr}" for en, fr in train) + "\n")
with open(heldout_path, "w", encoding="utf-8") as f:
    f.writelines(f"{en}\t{fr}\n" for en, fr in test)
print(f"{len(train)} training pairs ({len(english) - len(held)} English sentences), "
      f"{len(test)} held-out pairs ({len(held)} English sentences)", file=sys.stderr)
PY

# A 4-layer, 192-wide GPT-2 with a 2,048-token byte-level BPE: about 2.2 M parameters (~9 MB in float32).
# 800 steps of 32 x 128 tokens is about 40 passes over the ~80k training tokens. One thread: on a
# shared machine a second one mostly waits.
gptcli train "$WORK/train.txt" --out "$WORK/run" --overwrite \
    --arch gpt2 --preset mini --n-embd 192 --n-head 4 --block-size 128 --dropout 0.1 \
    --vocab-size 2048 --steps "$STEPS" --batch-size 32 --lr 2e-3 --warmup 100 \
    --eval-every 200 --save-every 0 --seed 1337 --device cpu --threads 1

rm -rf "$MODEL.new" && mkdir -p "$MODEL.new"
cp "$WORK/run"/{config.json,generation_config.json,model.safetensors,tokenizer.json,tokenizer_config.json} "$MODEL.new"/
cp "$ROOT/recipes/cards/tiny-en-fr.json" "$MODEL.new/gptcli-model.json"
cp "$ROOT/recipes/cards/tiny-en-fr-LICENSE.txt" "$MODEL.new/LICENSE.txt"
rm -rf "$MODEL" && mv "$MODEL.new" "$MODEL"

gptcli translate --references "$HELDOUT" -m "$MODEL" --from en --to fr --json -o "$WORK/heldout.fr.txt" | tee "$WORK/score.json"
