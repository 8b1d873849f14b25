"""The chat core behind `gptcli chat`.

- `history`: the conversation (OpenAI-style role/content messages) and its JSONL file;
- `prompt`: turning a conversation into prompt tokens (chat template or the plain fallback);
- `session`: one conversation with a loaded model: turns, context trimming, KV-cache reuse;
- `scripted`: one reply per input when stdin is not a terminal;
- `repl`: the interactive terminal chat (prompt_toolkit) and its slash commands.
"""
