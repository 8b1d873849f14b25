"""The bundled default model: listed, used when no --model is given, and writes real words."""

import json
import re
from pathlib import Path

import pytest

from gptcli import bundled

WORDS = Path(__file__).parent / "data" / "tinystories-words.txt"

pytestmark = pytest.mark.skipif(bundled.path_of(bundled.DEFAULT_MODEL) is None, reason="bundled model not built")


def test_models_lists_the_default_with_size_and_data(cli):
    r = cli("models", "--json")
    assert r.exit_code == 0
    cards = {c["name"]: c for c in r.json_lines()}
    card = cards[bundled.DEFAULT_MODEL]
    assert card["default"] is True
    assert 0 < card["size_bytes"] <= 15_000_000
    assert "TinyStories" in card["trained_on"]
    assert (bundled.path_of(bundled.DEFAULT_MODEL) / "DATA-LICENSE.txt").is_file()
    text = cli("models").stdout
    assert bundled.DEFAULT_MODEL in text and "(default)" in text


def test_generate_without_model_uses_the_bundled_one(cli):
    r = cli("generate", "Once upon a time", "-t", 20, "--seed", 1, "--json")
    assert r.exit_code == 0, r.stderr
    (rec,) = r.json_lines()
    assert rec["model"] == bundled.DEFAULT_MODEL
    assert rec["completion_tokens"] > 0


@pytest.mark.parametrize("seed", [1, 2])
def test_bundled_model_writes_mostly_dictionary_words(cli, seed):
    vocab = {w.strip() for w in WORDS.read_text().splitlines() if w and not w.startswith("#")}
    r = cli("generate", "Once upon a time", "-t", 80, "--seed", seed, "--json")
    text = r.json_lines()[0]["text"]
    words = [w.lower() for w in re.findall(r"[A-Za-z]+", text)]
    assert len(words) >= 20, text
    known = sum(w in vocab for w in words) / len(words)
    assert known >= 0.8, (known, text)


def test_card_is_valid_json_with_parameters():
    folder = bundled.path_of(bundled.DEFAULT_MODEL)
    card = json.loads((folder / "gptcli-model.json").read_text())
    assert card["parameters"] > 1_000_000
