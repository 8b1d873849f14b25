#!/usr/bin/env bash
# Reproduce the bundled default model, gptcli/bundled/tinystories, with gptcli itself.
#
#   bash recipes/make_bundled_model.sh [path/to/tinystories-sample.txt]
#
# Trains a tokenizer and a 5.7 M-parameter Llama-style model on the 2,316-story TinyStories
# sample (the last 5% of tokens held out for validation), evaluates it on the held-out
# stories, then copies it into the package with float16 weights and its card.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/tinystories-sample.txt}
RUN=runs/tinystories
mkdir -p runs
gptcli train "$DATA" --arch llama --preset mini --n-layer 6 --vocab-size 4096 --block-size 256 --batch-size 16 \
    --steps 1600 --lr 2e-3 --warmup 40 --dropout 0.1 --eval-every 200 --save-every 200 --seed 1337 \
    --out "$RUN" --overwrite --json > "$RUN.json"
python recipes/bundle_model.py "$RUN" gptcli/bundled/tinystories \
    --card recipes/cards/tinystories.json --license-file recipes/cards/tinystories-LICENSE.txt
# Held-out quality: the last 3% of stories, which lie wholly inside the validation split (the last 5% of tokens).
python recipes/tail_documents.py "$DATA" 0.03 > runs/tinystories-heldout.txt
gptcli eval runs/tinystories-heldout.txt --model tinystories --dtype float32 --json
