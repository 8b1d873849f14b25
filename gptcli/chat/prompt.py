"""Turning a conversation into the prompt a model continues.

With a chat template (the tokenizer's `chat_template`), the template renders the messages and
the generation prompt; its text is tokenized without adding special tokens again (templates
write their own). Base models without a template get the plain fallback format:

    {system prompt}                      (and a blank line, when there is one)
    User: {message}
    Assistant: {reply}
    User: {message}
    Assistant:

and generation stops at "\\nUser:" so the model does not write the user's next turn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gptcli.chat.history import Message
from gptcli.errors import InputError

if TYPE_CHECKING:
    from gptcli.loading import LoadedModel
    from gptcli.remote import RemoteModel

PLAIN_LABELS = {"user": "User", "assistant": "Assistant"}
PLAIN_STOP = ("\nUser:",)


def plain_text(system: str | None, messages: list[Message]) -> str:
    parts = [system.strip() + "\n\n"] if system and system.strip() else []
    parts += [f"{PLAIN_LABELS[m.role]}: {m.content}\n" for m in messages]
    parts.append("Assistant:")
    return "".join(parts)


class ChatFormat:
    """How one model's conversations become token ids."""

    def __init__(self, lm: LoadedModel | RemoteModel):
        from gptcli.remote import RemoteModel

        self.lm = lm
        # A remote model gets the messages themselves: its server applies the chat template.
        self.remote = isinstance(lm, RemoteModel)
        # Encoder-decoder models read the conversation as source text: the plain format suits them.
        self.templated = self.remote or (bool(getattr(lm, "has_chat_template", False)) and not lm.is_encoder_decoder)

    @property
    def local(self) -> LoadedModel:
        """The loaded model: only local models are formatted and tokenized here."""
        from gptcli.loading import LoadedModel

        assert isinstance(self.lm, LoadedModel), "a remote model's server formats its messages"
        return self.lm

    @property
    def name(self) -> str:
        if self.remote:
            return "the server's chat format"
        return "chat template" if self.templated else "plain format"

    @staticmethod
    def records(system: str | None, messages: list[Message]) -> list[dict[str, str]]:
        """The conversation as role/content records, the system prompt first."""
        return ([{"role": "system", "content": system}] if system else []) + [
            {"role": m.role, "content": m.content} for m in messages
        ]

    @property
    def stop(self) -> tuple[str, ...]:
        return () if self.templated else PLAIN_STOP

    def text(self, system: str | None, messages: list[Message]) -> str:
        if not self.templated:
            return plain_text(system, messages)
        records = self.records(system, messages)
        try:
            return self.local.tokenizer.apply_chat_template(records, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # jinja's TemplateError from raise_exception(), or a template bug
            reason = str(exc).strip() or type(exc).__name__
            raise InputError(
                f"the model's chat template rejected the conversation: {reason}",
                hint="Many templates need roles to alternate user/assistant after an optional system prompt.",
            ) from exc

    def ids(self, system: str | None, messages: list[Message]) -> list[int]:
        text = self.text(system, messages)
        if self.templated:
            return list(self.local.tokenizer(text, add_special_tokens=False)["input_ids"])
        from gptcli.generation import encode_prompt

        return encode_prompt(self.local, text)
