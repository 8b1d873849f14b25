"""Sampling settings shared by generate, chat and translate, with one validation.

Kept free of torch so bad values are rejected (exit 2) before a model loads.
"""

from __future__ import annotations

import math
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
        clean = {k: (tuple(v) if k == "stop" and v is not None else v) for k, v in changes.items() if v is not None}
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
            raise UsageError(f"--num-return-sequences must be from 1 to {MAX_RETURN_SEQUENCES} "
                             f"(got {self.num_return_sequences}).")
        if self.num_beams < 1:
            raise UsageError(f"--num-beams must be at least 1 (got {self.num_beams}).")
        if any(s == "" for s in self.stop):
            raise UsageError("--stop strings must not be empty.")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED - (self.num_return_sequences - 1):
            last = MAX_SEED - (self.num_return_sequences - 1)
            raise UsageError(f"--seed must be from 0 to {last}" + (" with this --num-return-sequences" if last < MAX_SEED else "")
                             + f" (got {_short(self.seed)}).")
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
        raise UsageError(f"unknown sampling option '{name}'.", hint=f"Known: {', '.join(sorted(types) + ['greedy', 'stop'])}.")
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
        raise UsageError(f"{name} needs a{' whole' if types[name] is int else ''} number (got '{_short(value)}').") from exc
