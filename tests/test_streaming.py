"""Incremental text: never split a multi-byte character, never leak part of a stop string."""

from gptcli.generation import TextTracker


def feed(tracker, ids):
    return [tracker.add(i) for i in ids] + [tracker.finish()]


def test_multibyte_characters_are_never_split(gpt2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gpt2_dir)
    text = "Café 日本語 🙂 naïve"
    ids = tok(text)["input_ids"]
    # Byte-level BPE splits these characters over several tokens.
    assert len(ids) > len(text.split())
    deltas = feed(TextTracker(tok, ()), ids)
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == text


def test_stop_string_prefix_is_held_back(gpt2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gpt2_dir)
    text = "The sun was warm and the sky was blue."
    ids = tok(text)["input_ids"]
    tracker = TextTracker(tok, ("sky",))
    deltas = []
    for i in ids:
        deltas.append(tracker.add(i))
        if tracker.stopped:
            break
    deltas.append(tracker.finish())
    assert "".join(deltas) == "The sun was warm and the "
    assert tracker.stopped and "s" not in "".join(deltas)[len("The sun was warm and the "):]
