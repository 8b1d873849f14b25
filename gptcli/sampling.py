"""Sampling settings shared by generate, chat and translate, with one validation.

Kept free of torch so bad values are rejected (exit 2) before a model loads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from gptcli.errors import UsageError


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
        if self.num_return_sequences < 1:
            raise UsageError(f"--num-return-sequences must be at least 1 (got {self.num_return_sequences}).")
        if self.num_beams < 1:
            raise UsageError(f"--num-beams must be at least 1 (got {self.num_beams}).")
        if any(s == "" for s in self.stop):
            raise UsageError("--stop strings must not be empty.")
        return self


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
    try:
        return types[name](value)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{name} needs a number (got '{value}').") from exc
