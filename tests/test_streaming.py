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
    assert tracker.stopped and "s" not in "".join(deltas)[len("The sun was warm and the ") :]


def test_draw_follows_the_probabilities_and_each_rows_seed():
    """Sampling draws in proportion to the weights, never a zero-weight entry, one seed per row."""
    import torch

    from gptcli.sampling import _draw

    probs = torch.tensor([[0.2, 0.0, 0.8], [0.0, 0.5, 0.5]])
    gens = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    picks = torch.stack([_draw(probs, gens) for _ in range(4000)])
    first, second = picks[:, 0], picks[:, 1]
    assert not (first == 1).any() and not (second == 0).any()
    assert abs((first == 2).float().mean().item() - 0.8) < 0.03
    assert abs((second == 1).float().mean().item() - 0.5) < 0.03
    # A row's draws depend on its own generator only, not on the other rows in the batch.
    alone = _draw(probs[1:], [torch.Generator().manual_seed(2)])
    together = _draw(probs, [torch.Generator().manual_seed(9), torch.Generator().manual_seed(2)])
    assert int(alone[0]) == int(together[1])
