"""Sliding windows: which tokens each forward pass sees and which it scores.

The method of the transformers perplexity guide: a text longer than the
model's context C is cut into chunks of `stride` new tokens; each chunk is
scored in one forward pass whose input also holds up to C - stride tokens
before it as context. Every token except the text's first is scored exactly
once (the first has nothing before it to be predicted from).

A token can only be predicted from at least one earlier token, so a window
scores at most C - 1 tokens: `stride = C` gives windows that overlap by that
one token, i.e. non-overlapping context with no token left unscored.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    begin: int  # first token fed to the model (index into the document's tokens)
    end: int  # one past the last token fed; the last `targets` tokens before `end` are scored
    targets: int

    @property
    def length(self) -> int:
        return self.end - self.begin


def plan_windows(n_tokens: int, context: int, stride: int) -> list[Window]:
    """Windows covering tokens 1..n_tokens-1 once each. Empty when n_tokens < 2."""
    if context < 2:
        raise ValueError("a context of at least 2 tokens is needed to score anything")
    if stride < 1:
        raise ValueError("stride must be at least 1")
    if n_tokens < 2:
        return []
    step = min(stride, context - 1)
    end = min(context, n_tokens)
    windows = [Window(0, end, end - 1)]
    while end < n_tokens:
        new_end = min(end + step, n_tokens)
        windows.append(Window(max(0, new_end - context), new_end, new_end - end))
        end = new_end
    return windows
