"""Sampling: the settings shared by generate, chat and translate (one validation), and the code
that turns a step's logits into tokens (repetition penalty, temperature, top-k/top-p/min-p, the
seeded draw).

torch is imported inside the functions that use it, so bad values are rejected (exit 2)
before torch or a model loads.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from gptcli.errors import UsageError

# Documented limits (README, "Sampling settings"). Each sequence of a request is generated in
# batches, so memory does not grow with -n; the cap keeps one typo from queueing hours of work.
MAX_RETURN_SEQUENCES = 1024
# Seeds are unsigned 64-bit numbers for torch.Generator; the n-th sample uses seed + n.
MAX_SEED = 2**64 - 1


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 256  # tokens to generate per sequence
    temperature: float = 0.8  # 0 means greedy
    top_k: int | None = 50  # keep the k most likely tokens (0/None: off)
    top_p: float | None = 1.0  # nucleus sampling mass, in (0, 1]
    min_p: float | None = None  # drop tokens below min_p * p(most likely)
    repetition_penalty: float | None = None  # > 1 discourages repeats (CTRL paper)
    greedy: bool = False  # argmax decoding; ignores the knobs above
    num_return_sequences: int = 1
    num_beams: int = 1  # beam search width (translate); 1 = no beam search
    stop: tuple[str, ...] = field(default_factory=tuple)  # strings that end a sequence
    seed: int | None = None

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0

    @property
    def batch_key(self) -> tuple:
        """Requests whose settings have the same key can share a batch: identical logit processing."""
        return (
            self.is_greedy,
            self.temperature,
            self.top_k,
            self.top_p,
            self.min_p,
            self.repetition_penalty,
            self.num_beams,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d

    def updated(self, **changes: Any) -> SamplingParams:
        """A copy with the non-None changes applied, then validated."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise UsageError(f"unknown sampling option '{unknown[0]}'.", hint=f"Known: {', '.join(sorted(known))}.")
        clean: dict[str, Any] = {
            k: (tuple(v) if k == "stop" and v is not None else v) for k, v in changes.items() if v is not None
        }
        return replace(self, **clean).validate()

    def validate(self) -> SamplingParams:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise UsageError(f"--max-new-tokens must be at least 1 (got {self.max_new_tokens}).")
        # NaN compares false with everything, so it passes every range check below and then
        # turns every probability into NaN: the output stops depending on the seed.
        for name in ("temperature", "top_p", "min_p", "repetition_penalty"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise UsageError(f"--{name.replace('_', '-')} must be a finite number (got {value}).")
        if self.temperature < 0:
            raise UsageError(f"--temperature must be 0 or more (got {self.temperature}).")
        if self.top_k is not None and self.top_k < 0:
            raise UsageError(f"--top-k must be 0 (off) or more (got {self.top_k}).")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UsageError(f"--top-p must be in (0, 1] (got {self.top_p}).")
        if self.min_p is not None and not 0 <= self.min_p <= 1:
            raise UsageError(f"--min-p must be in [0, 1] (got {self.min_p}).")
        if self.repetition_penalty is not None and self.repetition_penalty <= 0:
            raise UsageError(f"--repetition-penalty must be above 0 (got {self.repetition_penalty}).")
        if not 1 <= self.num_return_sequences <= MAX_RETURN_SEQUENCES:
            raise UsageError(
                f"--num-return-sequences must be from 1 to {MAX_RETURN_SEQUENCES} (got {self.num_return_sequences})."
            )
        if self.num_beams < 1:
            raise UsageError(f"--num-beams must be at least 1 (got {self.num_beams}).")
        if any(s == "" for s in self.stop):
            raise UsageError("--stop strings must not be empty.")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED - (self.num_return_sequences - 1):
            last = MAX_SEED - (self.num_return_sequences - 1)
            raise UsageError(
                f"--seed must be from 0 to {last}"
                + (" with this --num-return-sequences" if last < MAX_SEED else "")
                + f" (got {_short(self.seed)})."
            )
        return self


def _short(value: Any) -> str:
    """A number for an error message: a 4,000-digit seed is shown by its size, not in full
    (and str() refuses integers over 4,300 digits)."""
    if isinstance(value, int) and value.bit_length() > 100:
        return f"a number of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    text = str(value)
    return text if len(text) <= 40 else f"a {len(text)}-character value"


_ESCAPE = re.compile(r"\\(u[0-9A-Fa-f]{4}|.)", re.DOTALL)
_SIMPLE = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def unescape(text: str) -> str:
    r"""`\n`, `\t`, `\r`, `\\` and `\uXXXX` in a --stop value typed on the command line, as llama.cpp does.

    A shell cannot put a newline in an argument without $'...' quoting, so `--stop "\n"` arrives
    as a backslash and an n. Any other backslash sequence is kept as typed.
    """

    def one(match: re.Match) -> str:
        code = match.group(1)
        if code in _SIMPLE:
            return _SIMPLE[code]
        if len(code) == 5 and not 0xD800 <= int(code[1:], 16) <= 0xDFFF:  # a lone surrogate cannot be printed
            return chr(int(code[1:], 16))
        return match.group(0)

    return _ESCAPE.sub(one, text)


def coerce(name: str, value: Any) -> Any:
    """Convert a string (from `/set NAME VALUE` or a config file) to the option's type."""
    types = {
        "max_new_tokens": int,
        "temperature": float,
        "top_k": int,
        "top_p": float,
        "min_p": float,
        "repetition_penalty": float,
        "num_return_sequences": int,
        "num_beams": int,
        "seed": int,
    }
    if name == "greedy":
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower()
        if word in ("1", "true", "yes", "on"):
            return True
        if word in ("0", "false", "no", "off"):
            return False
        raise UsageError(f"greedy needs true or false (got '{value}').")  # not a silent False
    if name == "stop":
        return tuple(value) if isinstance(value, (list, tuple)) else (str(value),)
    if name not in types:
        raise UsageError(
            f"unknown sampling option '{name}'.", hint=f"Known: {', '.join(sorted(types) + ['greedy', 'stop'])}."
        )
    if isinstance(value, bool):  # JSON true/false are ints to Python; no setting here means that
        raise UsageError(f"{name} needs a number (got {str(value).lower()}).")
    if types[name] is int and isinstance(value, float):
        # JSON numbers such as 1e400 (infinity), 2.5 or 1e23 arrive as floats.
        if not value.is_integer():
            raise UsageError(f"{name} needs a whole number (got {_short(value)}).")
        value = int(value)
    try:
        return types[name](value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise UsageError(
            f"{name} needs a{' whole' if types[name] is int else ''} number (got '{_short(value)}')."
        ) from exc


# --------------------------------------------------------------------------- seeds


def resolve_seed(params: SamplingParams) -> int | None:
    """Every sampled run has a seed, reported back so any output can be reproduced."""
    if params.is_greedy:
        return params.seed
    return params.seed if params.seed is not None else random.SystemRandom().randrange(2**31)


def sequence_seed(seed: int | None, sample: int) -> int | None:
    """The seed of a request's `sample`-th sequence: the n-th sample uses seed + n."""
    return None if seed is None else seed + sample


def row_generators(seeds: list[int | None], device: Any) -> list[Any]:
    """One torch.Generator per sequence, seeded with its own seed (unseeded: torch's default seed)."""
    import torch

    generators = []
    for seed in seeds:
        g = torch.Generator(device=device)
        if seed is not None:
            g.manual_seed(seed)
        generators.append(g)
    return generators


# --------------------------------------------------------------------------- logits to tokens


def process_logits(logits: Any, params: SamplingParams, seen: Any | None) -> Any:
    """Apply the repetition penalty to (B, V) logits (in float32 when it applies)."""
    import torch

    if params.repetition_penalty not in (None, 1.0) and seen is not None:
        logits = logits.float()
        score = torch.gather(logits, 1, seen)
        score = torch.where(score < 0, score * params.repetition_penalty, score / params.repetition_penalty)
        logits = logits.scatter(1, seen, score)
    return logits


def choose_tokens(logits: Any, params: SamplingParams, generators: list[Any]) -> Any:
    """Pick one token per row: argmax, or a sample after temperature, top-k, top-p and min-p.

    Sampling happens among the top-k candidates only (sorted, so top-p is a cumulative sum):
    drawing from 50 candidates instead of a 50k vocabulary saves ~0.7 ms a token. Temperature
    is applied after that selection, in float32: dividing by it keeps the order, so the
    candidates are the same, and only k values per row are converted and scaled instead of
    the whole vocabulary. The distribution is the same as masking the full vocabulary.
    """

    if params.is_greedy:
        # float32 first: PyTorch's CPU argmax over bfloat16 is ~5x slower than the conversion plus argmax
        return logits.float().argmax(dim=-1)
    probs, index = candidate_probs(logits, params)
    picks = _draw(probs, generators)
    return index.gather(1, picks[:, None]).squeeze(1) if index is not None else picks


def candidate_probs(logits: Any, params: SamplingParams) -> tuple[Any, Any]:
    """The (unnormalised) float32 weights a sampled token is drawn with, after temperature, top-k,
    top-p and min-p, over the candidates `index` holds (B, k) — or over the whole vocabulary
    when `index` is None."""
    import torch

    vocab = logits.shape[-1]
    top_p = params.top_p if params.top_p is not None and params.top_p < 1.0 else None
    if params.top_k and params.top_k < vocab:
        values, index = torch.topk(logits, params.top_k, dim=-1)
    elif top_p is not None or params.min_p:
        values, index = torch.sort(logits, descending=True, dim=-1)
    else:
        values, index = logits, None
    probs = (values.float() / params.temperature).softmax(-1)
    if top_p is not None:
        drop = (probs.cumsum(-1) - probs) >= top_p  # keep the token that crosses p
        probs = probs.masked_fill(drop, 0.0)
    if params.min_p:
        floor = probs.max(dim=-1, keepdim=True).values * params.min_p
        probs = probs.masked_fill(probs < floor, 0.0)
    return probs, index


def _draw(probs: Any, generators: list[Any]) -> Any:
    """One index per row, drawn in proportion to the row's (unnormalised) probabilities.

    Inverse CDF with one uniform number per row from that row's own generator, so a
    sequence's draws depend only on its seed, not on what else is in the batch. One
    `torch.rand` per row costs a few microseconds where `torch.multinomial` cost ~20.
    """
    import torch

    cdf = probs.cumsum(-1)
    u = torch.cat([torch.rand(1, generator=g, device=probs.device, dtype=cdf.dtype) for g in generators])
    target = (u * cdf[:, -1])[:, None]
    # right=True skips zero-probability entries (their CDF equals their predecessor's)
    picks = torch.searchsorted(cdf, target, right=True).squeeze(1)
    return picks.clamp_(max=probs.shape[-1] - 1)
