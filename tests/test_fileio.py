"""The shared rules for files gptcli writes and lines it reads (gptcli.fileio)."""

import os
import stat

import pytest

from gptcli.errors import UsageError
from gptcli.fileio import AtomicFile, publish_files, publish_folder, remove_stale_folders, split_lines, write_atomic


@pytest.mark.parametrize("sep", ["\u2028", "\u2029", "\u0085", "\x0c", "\x0b", "\x1c", "\r"])
def test_lines_split_only_at_newline(sep):
    assert split_lines(f"a{sep}b\nc\r\nd\n") == [f"a{sep}b", "c", "d"]


def test_split_lines_keeps_empty_lines_but_not_a_last_empty_one():
    assert split_lines("") == []
    assert split_lines("\n") == [""]
    assert split_lines("a\n\nb") == ["a", "", "b"]


def test_new_file_gets_the_umask_mode_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "out.txt", "hello\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == 0o644


def test_rewrite_keeps_the_existing_mode(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old\n")
    target.chmod(0o640)
    write_atomic(target, "new\n")
    assert target.read_text() == "new\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_symlinked_target_is_written_through(tmp_path):
    real = tmp_path / "real.jsonl"
    real.write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    write_atomic(link, "new\n")
    assert link.is_symlink()
    assert real.read_text() == "new\n"


def test_temporaries_of_a_killed_writer_are_removed_on_the_next_write(tmp_path):
    target = tmp_path / "out.txt"
    dead_pid = 2**22 + 12345  # above the default pid_max: no process has it
    stale = tmp_path / f".out.txt.{dead_pid}.abcd1234.tmp"
    stale.write_text("half")
    live = tmp_path / f".out.txt.{os.getpid()}.ffff0000.tmp"  # a writer that still runs
    live.write_text("busy")
    other = tmp_path / f".other.txt.{dead_pid}.abcd1234.tmp"
    other.write_text("not ours")
    write_atomic(target, "x\n")
    assert not stale.exists()
    assert live.exists() and other.exists()


def test_failed_block_leaves_no_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), AtomicFile(target) as f:
        f.write("partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_missing_folder_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        write_atomic(tmp_path / "nope" / "out.txt", "x")


def _fill(files: dict):
    def build(folder):
        for name, text in files.items():
            (folder / name).write_text(text)

    return build


def test_publish_folder_replaces_a_folder_whole(tmp_path):
    target = tmp_path / "step-1"
    publish_folder(target, _fill({"a": "old", "b": "old"}))
    seen = []

    def build(folder):
        seen.append(sorted(p.name for p in tmp_path.iterdir()))  # the old folder is still in place meanwhile
        _fill({"a": "new"})(folder)

    publish_folder(target, build)
    assert "step-1" in seen[0]
    assert sorted(p.name for p in target.iterdir()) == ["a"] and (target / "a").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["step-1"]  # no temporary or old folder left


def test_publish_folder_that_fails_leaves_the_old_folder_and_no_temporary(tmp_path):
    target = tmp_path / "step-1"
    publish_folder(target, _fill({"a": "old"}))

    def broken(folder):
        (folder / "a").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        publish_folder(target, broken)
    assert (target / "a").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["step-1"]


def test_publish_files_adds_files_to_a_folder_that_holds_others(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    (tmp_path / "config.json").write_text("old")
    stale = tmp_path / ".tmp-final-999999999"  # left by a killed run
    stale.mkdir()
    names = publish_files(tmp_path, _fill({"config.json": "new", "model.safetensors": "w"}), "final")
    assert names == ["config.json", "model.safetensors"]
    assert (tmp_path / "config.json").read_text() == "new" and (tmp_path / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "keep.txt", "model.safetensors"]


def test_remove_stale_folders_keeps_this_process_and_other_names(tmp_path):
    for name in (
        ".tmp-step-00000004-999999999",
        ".old-step-00000002-999999999",
        f".tmp-step-00000006-{os.getpid()}",
        "step-00000004",
    ):
        (tmp_path / name).mkdir()
    remove_stale_folders(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".tmp-step-00000006-{os.getpid()}", "step-00000004"]
