"""translate's core, in process: languages, model families, prompts, splitting, streaming order, scoring."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from gptcli.errors import InputError, UsageError
from gptcli.translation import languages
from gptcli.translation.families import apply_plan, detect_kind, make_plan
from gptcli.translation.languages import find, resolve

FR, EN, DE = find("fr"), find("en"), find("de")


# --------------------------------------------------------------------------- languages


@pytest.mark.parametrize(
    "typed,code",
    [
        ("fr", "fr"),
        ("French", "fr"),
        ("FRA", "fr"),
        ("fra_Latn", "fr"),
        ("pt-BR", "pt"),
        ("zh_Hant", "zh"),
        ("Farsi", "fa"),
        ("de_DE", "de"),
    ],
)
def test_language_codes_names_and_family_codes_resolve(typed, code):
    assert resolve(typed, "--to").code == code


def test_unknown_language_lists_close_matches():
    with pytest.raises(UsageError) as err:
        resolve("frnch", "--to")
    assert err.value.exit_code == 2
    assert "French (fr)" in str(err.value) and "'frnch'" in str(err.value)


def test_every_language_has_distinct_code_and_iso3():
    langs = languages.all_languages()
    assert len({lang.code for lang in langs}) == len(langs)
    assert len({lang.iso3 for lang in langs}) == len(langs)
    assert all(len(lang.code) == 2 and len(lang.iso3) == 3 for lang in langs)


# --------------------------------------------------------------------------- families (fake models)


class FakeTok:
    def __init__(self, vocab=(), **attrs):
        self.vocab = {t: i for i, t in enumerate(vocab)}
        self.all_special_tokens = []
        self.__dict__.update(attrs)

    def get_vocab(self):
        return dict(self.vocab)


def fake_lm(model_type, vocab=(), encdec=True, chat=False, name="m", config=None, **tok_attrs):
    cfg = SimpleNamespace(model_type=model_type, **(config or {}))
    model = SimpleNamespace(config=cfg, generation_config=SimpleNamespace(forced_bos_token_id=None))
    return SimpleNamespace(
        model=model,
        tokenizer=FakeTok(vocab, **tok_attrs),
        name=name,
        path=Path("/nonexistent") / name,
        is_encoder_decoder=encdec,
        has_chat_template=chat,
    )


def test_nllb_uses_flores_codes_and_forces_the_target_token():
    lm = fake_lm("m2m_100", ["<s>", "eng_Latn", "fra_Latn", "deu_Latn"])
    assert detect_kind(lm) == "nllb"
    plan = make_plan(lm, EN, FR)
    assert (plan.src_lang_code, plan.forced_bos_token_id) == ("eng_Latn", 2)
    apply_plan(lm, plan)
    assert lm.tokenizer.src_lang == "eng_Latn" and lm.model.generation_config.forced_bos_token_id == 2
    with pytest.raises(UsageError, match="cannot translate"):
        make_plan(lm, EN, find("ja"))
    with pytest.raises(UsageError, match="--from"):
        make_plan(lm, None, FR)


def test_m2m100_and_mbart_language_tokens():
    m2m = fake_lm("m2m_100", ["<s>", "__en__", "__fr__"])
    assert detect_kind(m2m) == "m2m100"
    plan = make_plan(m2m, EN, FR)
    assert (plan.src_lang_code, plan.forced_bos_token_id) == ("en", 2)
    mbart = fake_lm("mbart", ["<s>", "en_XX", "fr_XX", "de_DE"])
    plan = make_plan(mbart, DE, FR)
    assert (plan.kind, plan.src_lang_code, plan.forced_bos_token_id) == ("mbart", "de_DE", 2)


def test_t5_uses_its_task_prefixes_and_refuses_other_pairs():
    tsp = {
        "translation_en_to_fr": {"prefix": "translate English to French: "},
        "translation_en_to_de": {"prefix": "translate English to German: "},
        "summarization": {"prefix": "x"},
    }
    lm = fake_lm("t5", config={"task_specific_params": tsp})
    plan = make_plan(lm, None, FR)
    assert plan.prefix == "translate English to French: " and plan.source == EN
    with pytest.raises(UsageError) as err:
        make_plan(lm, None, find("es"))
    assert "en→fr" in str(err.value) and "Spanish" in str(err.value)
    generic = fake_lm("t5")  # flan-style: any pair, named in the prefix
    assert make_plan(generic, DE, FR).prefix == "translate German to French: "


def test_marian_target_tokens_declared_languages_and_names():
    multi = fake_lm("marian", [">>fra<<", ">>deu<<", "▁a"])
    assert make_plan(multi, None, FR).prefix == ">>fra<< "
    with pytest.raises(UsageError, match="cannot translate into Japanese"):
        make_plan(multi, None, find("ja"))
    declared = fake_lm("marian", ["▁a"], source_lang="en", target_lang="de")
    assert make_plan(declared, None, DE).source == EN
    with pytest.raises(UsageError, match="translates English to German"):
        make_plan(declared, None, FR)
    by_name = fake_lm("marian", ["▁a"], name="Helsinki-NLP/opus-mt-en-de")
    with pytest.raises(UsageError, match="cannot translate"):
        make_plan(by_name, None, FR)


def test_causal_models_plain_needs_source_chat_does_not():
    with pytest.raises(UsageError, match="--from"):
        make_plan(fake_lm("gpt2", encdec=False), None, FR)
    assert make_plan(fake_lm("llama", encdec=False, chat=True), None, FR).kind == "chat"
    with pytest.raises(UsageError, match="same language"):
        make_plan(fake_lm("gpt2", encdec=False), FR, FR)


# --------------------------------------------------------------------------- real tiny models


@pytest.fixture(scope="module")
def marian(marian_dir):
    from gptcli.loading import open_model

    lm, _ = open_model(str(marian_dir), device="cpu", dtype="float32", threads=1)
    return lm


@pytest.fixture(scope="module")
def chat_llama(tmp_path_factory):
    from tiny_translate import build_causal

    from gptcli.loading import open_model

    lm, _ = open_model(
        str(build_causal(tmp_path_factory.mktemp("chat"), "llama", chat=True)), device="cpu", dtype="float32", threads=1
    )
    return lm


def _translator(lm, source=None, target=FR, batch_size=16, max_new_tokens=None):
    from gptcli.sampling import SamplingParams
    from gptcli.translation.pipeline import Translator

    return Translator(
        lm,
        make_plan(lm, source, target),
        SamplingParams(temperature=0.0),
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
    )


def test_m2m100_sets_source_token_and_forces_the_target_token(tmp_path):
    import torch
    from tiny_translate import build_m2m100

    from gptcli.loading import open_model
    from gptcli.translation.sources import Line, LineFeed

    lm, _ = open_model(str(build_m2m100(tmp_path / "m2m")), device="cpu", dtype="float32", threads=1)
    tok = lm.tokenizer
    assert detect_kind(lm) == "m2m100"
    with pytest.raises(UsageError, match="no language token for Latin"):
        make_plan(lm, EN, find("la"))
    plan = make_plan(lm, DE, FR)
    apply_plan(lm, plan)
    assert tok("Hello world.")["input_ids"][0] == tok.convert_tokens_to_ids("__de__")
    fr = tok.convert_tokens_to_ids("__fr__")
    assert plan.forced_bos_token_id == fr
    with torch.inference_mode():
        out = lm.model.generate(**tok(["Hello world."], return_tensors="pt"), max_new_tokens=3)
    assert out[0, 1].item() == fr  # decoder start, then the target language
    results = list(_translator(lm, DE, FR, max_new_tokens=4).run(LineFeed([Line(1, "Hello world."), Line(2, "")])))
    assert len(results) == 2 and "__fr__" not in results[0].text and results[1].text == ""


def test_marian_plan_reads_tokenizer_languages(marian):
    assert detect_kind(marian) == "marian"
    plan = make_plan(marian, None, FR)
    assert plan.source == EN and plan.seq2seq
    with pytest.raises(UsageError, match="cannot translate into German"):
        make_plan(marian, None, DE)


def test_prompts_for_chat_and_plain_models(chat_llama):
    from gptcli.translation.prompts import plain_prompt, prompt_ids, stop_strings

    plan = make_plan(chat_llama, EN, FR)
    text = chat_llama.tokenizer.decode(prompt_ids(chat_llama, plan, "I like tea."))
    assert "Translate the following English text into French" in text and "I like tea." in text
    assert text.rstrip().endswith("assistant:") and stop_strings(plan) == ()
    plain = plan.__class__("plain", FR, EN)
    assert plain_prompt("I like tea.", plain) == "English: I like tea.\nFrench:"
    assert stop_strings(plain) == ("\n",)


def test_long_line_is_cut_at_sentence_boundaries(marian):
    from gptcli.translation.pipeline import split_sentences
    from gptcli.translation.sources import Line, LineFeed

    assert split_sentences("One. Two! Three? 四。五") == ["One.", "Two!", "Three?", "四。", "五"]
    tr = _translator(marian)
    long = " ".join(["The cat is black.", "Where is the station?"] * 12)
    assert tr.count(long) > marian.context_length
    pieces = tr.pieces(Line(1, long))
    assert len(pieces) > 1 and all(tr.count(p) <= tr.budget for p in pieces)
    assert " ".join(pieces) == long
    out = list(tr.run(LineFeed([Line(1, "Hello world."), Line(2, long), Line(3, "")])))
    assert [r.line.number for r in out] == [1, 2, 3] and out[1].pieces == len(pieces) and out[2].text == ""
    assert all("\n" not in r.text for r in out)


def test_sentence_longer_than_the_context_is_cut_at_clauses_then_words(marian):
    from gptcli.translation.sources import Line, LineFeed

    tr = _translator(marian)
    clauses = ", ".join(["the cat is black"] * 10) + "; " + ", ".join(["where is the station"] * 10) + "."
    words = "word " * 200
    glued = "x" * 400  # one "word" longer than the context
    for text in (clauses, words, glued):
        assert tr.count(text) > tr.budget
        pieces, cut = tr.split(Line(1, text))
        assert cut == 1 and len(pieces) > 1 and all(tr.count(p) <= tr.budget for p in pieces)
        assert "".join(pieces).replace(" ", "") == text.replace(" ", "")
    pieces, _ = tr.split(Line(1, clauses))
    assert all(p.endswith((",", ";", ".")) for p in pieces)  # cut after clauses, not inside them
    out = list(tr.run(LineFeed([Line(1, "Hello world."), Line(2, words + ". " + clauses), Line(3, "I like tea.")])))
    assert [r.line.number for r in out] == [1, 2, 3] and all(r.text for r in out)
    assert out[0].warnings == [] and out[2].warnings == []
    assert "line 2: 2 sentences too long for the model's context" in out[1].warnings[0]


def test_streaming_writes_a_line_before_the_next_one_arrives(marian):
    """With a slow producer, line 1 comes out while line 2 has not been typed yet."""
    from gptcli.translation.sources import Line, LineFeed

    first_out = threading.Event()
    waited = []

    def slow_input():
        yield Line(1, "Hello world.")
        waited.append(first_out.wait(timeout=20))  # blocks until line 1's translation is out
        yield Line(2, "The cat is black.")

    tr = _translator(marian, batch_size=16)
    seen = []
    for result in tr.run(LineFeed(slow_input())):
        seen.append(result.line.number)
        first_out.set()
    assert seen == [1, 2] and waited == [True]


def test_batched_and_single_line_runs_give_the_same_lines(marian):
    from gptcli.translation.sources import Line, LineFeed

    lines = [
        Line(i, t)
        for i, t in enumerate(["Hello world.", "", "Le chat est noir.", "Café 🙂 日本語", "  I like tea."], 1)
    ]
    # Same length limit for every line: a random model runs to it, and Marian forces EOS at the limit.
    batched = [r.text for r in _translator(marian, batch_size=16, max_new_tokens=12).run(LineFeed(list(lines)))]
    single = [r.text for r in _translator(marian, batch_size=1, max_new_tokens=12).run(LineFeed(list(lines)))]
    assert len(batched) == len(lines) and batched[1] == ""
    assert batched == single
    assert batched[4].startswith("  ") or batched[4] == ""  # indentation kept


def test_a_line_translates_the_same_alone_and_beside_a_long_line(marian):
    """Encoder inputs are padded on the right (left padding shifted a short line's positions), and
    each line keeps its own length limit in a batch (the forced end token cut it short when alone)."""
    from gptcli.translation.sources import Line, LineFeed

    long = "The cat is black and the station is where I like tea, you like coffee."
    alone = _translator(marian, batch_size=1).run(LineFeed([Line(1, "Go."), Line(2, long)]))
    batched = _translator(marian, batch_size=16).run(LineFeed([Line(1, "Go."), Line(2, long)]))
    alone, batched = list(alone), list(batched)
    assert [r.text for r in batched] == [r.text for r in alone]
    assert [r.completion_tokens for r in batched] == [r.completion_tokens for r in alone]
    assert marian.tokenizer.padding_side == "right"


# --------------------------------------------------------------------------- scoring


def test_scores_match_sacrebleu_with_several_references(tmp_path):
    from sacrebleu.metrics import BLEU, CHRF

    from gptcli.translation.scoring import read_references, score

    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("Hi.\tSalut !\nHi.\tSalut.\nI run.\tJe cours.\tattribution\n", encoding="utf-8")
    refs = read_references(pairs)
    assert refs.sources == ["Hi.", "I run."] and refs.refs == [["Salut !", "Salut."], ["Je cours."]]
    hyps = ["Salut .", "Je cours ."]
    got = score(hyps, refs.refs)
    assert score(["Salut.", "Je cours. "], refs.refs)["exact"] == 2 and got["exact"] == 0
    streams = [["Salut !", "Je cours."], ["Salut.", None]]
    assert got["bleu"] == round(BLEU().corpus_score(hyps, streams).score, 2)
    assert got["chrf"] == round(CHRF().corpus_score(hyps, streams).score, 2)
    assert (got["sentences"], got["references"]) == (2, 3)
    with pytest.raises(InputError):
        score(["a"], [["a"], ["b"]])


def test_big_inputs_and_blank_lines_cost_no_generation(marian):
    from gptcli.translation.sources import Line, LineFeed

    lines = [
        Line(i, "" if i % 5000 else "Hello world.") for i in range(1, 12_001)
    ]  # more than the reader's queue holds
    tr = _translator(marian, max_new_tokens=4)
    out = list(tr.run(LineFeed(lines)))
    assert len(out) == 12_000 and [r.line.number for r in out[:3]] == [1, 2, 3]
    assert tr.stats.pieces == 2 and sum(1 for r in out if r.text) <= 2
