"""The chat core behind `gptcli chat`.

- `history`: the conversation (OpenAI-style role/content messages) and its JSONL file;
- `prompt`: turning a conversation into prompt tokens (chat template or the plain fallback);
- `session`: one conversation with a loaded model: turns, context trimming, KV-cache reuse.

The front ends that present it live in the CLI: gptcli/cli/chat_script.py (one reply per input
when stdin is not a terminal) and gptcli/cli/chat_repl.py (the interactive terminal chat).
"""
