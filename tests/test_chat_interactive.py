"""`gptcli chat` in a real pseudo-terminal (pexpect): the prompt, streamed replies, slash commands,
Ctrl-C during a reply and Ctrl-D to leave."""

from __future__ import annotations

import io
import json
import re
import sys

import pytest
from conftest import cli_env
from tiny import build_model

pexpect = pytest.importorskip("pexpect")

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]")
# prompt_toolkit turns bracketed paste on while it reads a line and off when the line is accepted:
# reliable markers for "waiting for input" and "input taken", whatever the reply's text.
READING, TAKEN = "\x1b[?2004h", "\x1b[?2004l"


def plain(text: str) -> str:
    return ANSI.sub("", text).replace("\r", "")


# A colour or bold/underline SGR sequence (prompt_toolkit's plain resets, ESC[0m, do not count).
STYLED = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:1|4|3[0-7]|9[0-7]|38;[0-9;]+)m")


def spawn(*args, color=False, timeout=60):
    env = cli_env(PROMPT_TOOLKIT_NO_CPR="1", TERM="xterm")  # no terminal answers cursor-position requests here
    if color:
        env.pop("NO_COLOR")
    child = pexpect.spawn(
        sys.executable,
        ["-m", "gptcli", "chat", *map(str, args)],
        env=env,
        encoding="utf-8",
        timeout=timeout,
        dimensions=(40, 200),
    )
    child.expect_exact(READING)
    return child


def say(child, line: str) -> str:
    """Type a line, wait until the next prompt; returns what was printed in between (plain text)."""
    child.sendline(line)
    child.expect_exact(TAKEN)
    child.expect_exact(READING)
    return plain(child.before)


@pytest.fixture(scope="module")
def long_model(tmp_path_factory):
    # Context 1024: room for a long reply to interrupt.
    return build_model(tmp_path_factory.mktemp("tiny-gpt2-1k"), "gpt2", context=1024)


def test_session_with_slash_commands(gpt2_dir, tmp_path):
    saved = tmp_path / "chat.jsonl"
    child = spawn("--model", gpt2_dir, "--greedy", "-t", "6")
    transcript = io.StringIO()
    child.logfile_read = transcript
    try:
        assert "/help" in plain(child.before)  # the banner points at /help
        assert "/system TEXT" in say(child, "/help")
        first = say(child, "Hello Max")
        out = say(child, "/bogus")
        assert "Unknown command /bogus" in out and "/help" in out
        assert "System prompt set." in say(child, "/system Be brief.")
        assert "Sampling" in say(child, "/set")
        assert "temperature = 0.7" in say(child, "/set temperature 0.7")
        assert "Error:" in say(child, "/set temperature hot")  # a bad value: an error, the chat goes on
        assert "Saved 3 messages" in say(child, f"/save {saved}")
        records = [json.loads(line) for line in saved.read_text().splitlines()]
        assert [r["role"] for r in records] == ["system", "user", "assistant"]
        assert records[0]["content"] == "Be brief." and records[1]["content"] == "Hello Max"
        # The reply that was streamed to the screen (control characters shown as U+FFFD there).
        shown = "".join(
            "\ufffd" if (ord(c) < 32 and c not in "\n\t") or c == "\x7f" else c for c in records[2]["content"]
        )
        assert shown and shown in first
        assert "New conversation" in say(child, "/reset")
        assert "Nothing to undo" in say(child, "/undo")
        assert "Loaded 3 messages" in say(child, f"/load {saved}")
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"role": "user", "content": "hi"}\n{oops\n')
        out = say(child, f"/load {bad}")
        assert "Error:" in out and "line 2" in out  # a bad file: an error, the conversation is unchanged
        # A multi-line block between lines of three quotes is one message.
        child.sendline('"""')
        child.expect_exact(READING)
        child.sendline("line one")
        child.expect_exact(READING)
        say(child, '"""')
        assert "Saved 5 messages" in say(child, f"/save {saved}")
        records = [json.loads(line) for line in saved.read_text().splitlines()]
        assert records[3] == {"role": "user", "content": "line one"}
        assert "Dropped the last exchange" in say(child, "/undo")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    assert not STYLED.search(transcript.getvalue())  # NO_COLOR: no colour, no bold anywhere


def test_ctrl_c_keeps_partial_reply_and_ctrl_d_leaves(long_model, tmp_path):
    saved = tmp_path / "chat.jsonl"
    child = spawn("--model", long_model, "--greedy", "-t", "1000", color=True)
    try:
        child.sendline("Tell me a long story")
        child.expect_exact(TAKEN)
        child.expect(r"\S{8}")  # the reply is streaming: text shows up before it is finished
        child.sendintr()
        child.expect_exact("[interrupted")
        assert STYLED.search(child.before[-20:])  # on a terminal without NO_COLOR, notices are styled
        child.expect_exact(READING)
        assert "Saved 2 messages" in say(child, f"/save {saved}")  # the user's message and the partial reply
        child.sendeof()  # Ctrl-D
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    reply = json.loads(saved.read_text().splitlines()[-1])
    assert reply["role"] == "assistant" and reply["interrupted"] is True
    assert 8 <= len(reply["content"])


def test_piped_stdout_gets_only_the_replies(gpt2_dir, tmp_path):
    # `gptcli chat | tee log`: stdin is a terminal, stdout is not. The line editor draws on the
    # terminal (stderr); stdout gets the replies and nothing else.
    out, hist = tmp_path / "out.txt", tmp_path / "h.jsonl"
    env = cli_env(PROMPT_TOOLKIT_NO_CPR="1", TERM="xterm")
    command = f'exec "{sys.executable}" -m gptcli chat --model "{gpt2_dir}" -t 6 --history "{hist}" > "{out}"'
    child = pexpect.spawn("bash", ["-c", command], env=env, encoding="utf-8", timeout=60, dimensions=(40, 200))
    try:
        child.expect_exact(READING)  # the editor is on the terminal
        say(child, "Hello Max")
        assert "Sampling" in say(child, "/set")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    reply = json.loads(hist.read_text().splitlines()[-1])["content"]
    shown = "".join("\ufffd" if (ord(c) < 32 and c not in "\n\t") or c == "\x7f" else c for c in reply)
    assert out.read_text() == shown + "\n"
