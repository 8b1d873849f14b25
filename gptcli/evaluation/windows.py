"""Rolling windows: which tokens each forward pass sees and which it scores.

The rule of lm-evaluation-harness's `loglikelihood_rolling`, so numbers compare
with it. The scored sequence is a prefix token (the tokenizer's BOS, else its
EOS) followed by the text's tokens; every text token is predicted exactly once.
A window of at most C tokens is fed and the predictions at its last positions
are scored, each for the token after it (the last target is never fed):

- the first window feeds [prefix] + text[:C-1] and predicts text[0:C];
- each later one predicts the next `stride` S tokens (fewer at the end) and
  feeds the C tokens before each of them as context.

The default S = C gives the harness's disjoint windows (`context_len=1`); a
smaller S gives each token more left context, at about C/S times the work.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    begin: int  # first token fed to the model (index into the scored sequence)
    end: int  # one past the last token fed
    targets: int  # the predictions at the last `targets` fed positions are scored: tokens end-targets+1 .. end

    @property
    def length(self) -> int:
        return self.end - self.begin


def plan_windows(n_tokens: int, context: int, stride: int) -> list[Window]:
    """Windows predicting tokens 1..n_tokens-1 of the sequence once each (token 0, the prefix, is only
    context). Empty when n_tokens < 2."""
    if context < 1:
        raise ValueError("a context of at least 1 token is needed to score anything")
    if stride < 1:
        raise ValueError("stride must be at least 1")
    if n_tokens < 2:
        return []
    wanted = n_tokens - 1  # tokens to predict
    step = min(stride, context)
    done = min(context, wanted)
    windows = [Window(0, done, done)]
    while done < wanted:
        end = min(done + step, wanted)  # predictions at positions done..end-1, for tokens done+1..end
        windows.append(Window(max(0, end - context), end, end - done))
        done = end
    return windows
