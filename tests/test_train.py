"""`gptcli train`: the whole path from text to a model folder that `generate` loads."""

from __future__ import annotations

import json
import math

import pytest
from test_train_support import TINY, cli, corpus, metrics


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    data = corpus(root)
    out = root / "run"
    code, stdout, stderr = cli(
        "train", data, *TINY, "--steps", "12", "--eval-every", "4", "--seed", "3", "--out", out, "--json"
    )
    assert code == 0, stderr
    return out, stdout, stderr


def test_train_writes_a_loadable_model_folder(trained):
    out, stdout, stderr = trained
    summary = json.loads(stdout)  # stdout is the JSON summary and nothing else
    for key in ("best_val_loss", "final_val_loss", "final_loss", "tokens_seen", "wall_s", "ms_per_step", "steps"):
        assert key in summary
    assert summary["steps"] == 12
    assert summary["tokens_seen"] == 12 * 4 * 32  # steps x batch x block
    vals = [r["val_loss"] for r in metrics(out) if "val_loss" in r]
    assert len(vals) == 3  # steps 4, 8 and the end
    assert summary["best_val_loss"] == pytest.approx(min(vals), abs=1e-6)
    assert "step 12/12" in stderr and "Error" not in stderr
    for name in ("config.json", "model.safetensors", "tokenizer.json", "run.json", "gptcli-train.yaml"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    tok = json.loads((out / "tokenizer.json").read_text())
    eot = next(t["id"] for t in tok["added_tokens"] if t["content"] == "<|endoftext|>")
    assert config["bos_token_id"] == config["eos_token_id"] == eot
    assert config["vocab_size"] == 300 and config["n_layer"] == 1 and config["n_embd"] == 32
    assert config["n_positions"] == 32 and config["activation_function"] == "gelu"

    code, gen_out, gen_err = cli("generate", "Tom saw", "--model", out, "-t", "5", "--seed", "1", "--json")
    assert code == 0, gen_err
    assert json.loads(gen_out)["completion_tokens"] >= 1


def test_manifest_records_the_run(trained):
    out, _, _ = trained
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["seed"] == 3
    assert manifest["device"] == "cpu"
    assert set(manifest["versions"]) >= {"gptcli", "torch", "transformers"}
    import hashlib

    data = manifest["data"][0]
    assert data["sha256"] == hashlib.sha256(open(data["path"], "rb").read()).hexdigest()
    assert manifest["config"]["steps"] == 12


def test_loss_goes_down(trained):
    out, _, _ = trained
    losses = [r["loss"] for r in metrics(out) if "loss" in r]
    assert losses[-1] < losses[0] - 0.3


def test_config_file_and_precedence(tmp_path):
    data = corpus(tmp_path)
    cfg = tmp_path / "run.yaml"
    cfg.write_text("steps: 7\nlr: 0.002\nn-layer: 2\nschedule: linear\nwarmup: 1\n", encoding="utf-8")
    out = tmp_path / "out"
    code, stdout, stderr = cli("train", data, *TINY, "--config", cfg, "--steps", "3", "--out", out, "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["steps"] == 3  # command line beats the file
    import yaml

    effective = yaml.safe_load((out / "gptcli-train.yaml").read_text())
    assert effective["steps"] == 3 and effective["lr"] == 0.002 and effective["schedule"] == "linear"
    assert json.loads((out / "config.json").read_text())["n_layer"] == 1  # TINY's --n-layer 1 beats n-layer: 2
    lrs = [r["lr"] for r in metrics(out) if "lr" in r]
    # linear decay from 0.002 to 0.0002 after one warmup step: 0.002 * (1 - 0.9 * progress)
    assert lrs[-1] == pytest.approx(0.0002, rel=1e-6)


def test_toml_config(tmp_path):
    from gptcli.training import configfile
    from gptcli.training.settings import merge

    cfg = tmp_path / "run.toml"
    cfg.write_text('[train]\nsteps = 5\ntokenizer-type = "char"\n[finetune]\nsteps = 9\n', encoding="utf-8")
    s = merge({"out": "x"}, configfile.load(cfg, "train"))
    assert s.steps == 5 and s.tokenizer_type == "char"
    assert merge({}, configfile.load(cfg, "finetune")).steps == 9


def test_non_empty_out_needs_overwrite(tmp_path):
    data = corpus(tmp_path)
    out = tmp_path / "out"
    assert cli("train", data, *TINY, "--steps", "2", "--out", out)[0] == 0
    code, stdout, stderr = cli("train", data, *TINY, "--steps", "2", "--out", out)
    assert code == 2 and stdout == ""
    assert stderr.strip().splitlines()[-1].startswith("Error: output folder")
    code, _, stderr = cli("train", data, *TINY, "--steps", "3", "--out", out, "--overwrite", "--json")
    assert code == 0, stderr
    assert [r["step"] for r in metrics(out) if "loss" in r][-1] == 3  # old metrics are gone


def test_overwrite_refuses_foreign_folder(tmp_path):
    data = corpus(tmp_path)
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"x")
    code, _, stderr = cli("train", data, *TINY, "--steps", "2", "--out", out, "--overwrite")
    assert code == 2 and "refusing to delete" in stderr
    assert (out / "holiday.jpg").exists()


def test_overwrite_never_deletes_a_project_that_only_has_a_config_json(tmp_path):
    data = corpus(tmp_path)
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "config.json").write_text("{}", encoding="utf-8")
    (proj / "main.py").write_text("code\n", encoding="utf-8")
    code, stdout, stderr = cli("train", data, *TINY, "--steps", "2", "--out", proj, "--overwrite")
    assert code == 2 and stdout == ""
    assert "not look like a gptcli output folder" in stderr and "tokenizer" not in stderr  # refused before any work
    assert sorted(p.name for p in proj.iterdir()) == ["config.json", "main.py", "src"]


def test_overwrite_refuses_a_run_folder_with_foreign_files_and_deletes_nothing(tmp_path):
    data = corpus(tmp_path)
    out = tmp_path / "run"
    assert cli("train", data, *TINY, "--steps", "2", "--out", out)[0] == 0
    before = sorted(p.name for p in out.iterdir())
    (out / "notes.txt").write_text("mine\n", encoding="utf-8")
    (out / "checkpoints" / "keep-me").mkdir()
    code, _, stderr = cli("train", data, *TINY, "--steps", "3", "--out", out, "--overwrite")
    assert code == 2 and "tokenizer" not in stderr
    error = stderr.strip().splitlines()[-1]
    assert "notes.txt" in error and "checkpoints/keep-me" in error and "refusing to delete anything" in error
    assert sorted(p.name for p in out.iterdir()) == sorted([*before, "notes.txt"])
    assert (out / "checkpoints" / "keep-me").is_dir() and (out / "model.safetensors").is_file()


def test_overwrite_recognises_runs_made_before_the_signature_and_works_through_a_link(tmp_path):
    data = corpus(tmp_path)
    out = tmp_path / "run"
    assert cli("train", data, *TINY, "--steps", "2", "--out", out)[0] == 0
    record = json.loads((out / "run.json").read_text())
    assert record["signature"] == "gptcli-run/1" and "model.safetensors" in record["outputs"]
    for key in ("signature", "outputs", "segments"):  # what run.json held before gptcli signed it
        del record[key]
    (out / "run.json").write_text(json.dumps(record), encoding="utf-8")
    from gptcli.training import outdir

    # its final model is known by name (a resume in place lists it in the new run.json)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(outdir.published(out))
    assert "metrics.jsonl" not in outdir.published(out)
    link = tmp_path / "link"
    link.symlink_to(out, target_is_directory=True)
    code, _, stderr = cli("train", data, *TINY, "--steps", "3", "--out", link, "--overwrite")
    assert code == 0, stderr
    assert link.is_symlink() and [r["step"] for r in metrics(out) if "loss" in r][-1] == 3  # the old run is gone
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli("train", data, *TINY, "--steps", "1", "--out", empty, "--overwrite")[0] == 0  # nothing to replace
    broken = tmp_path / "broken"
    broken.symlink_to(tmp_path / "nowhere")
    code, _, stderr = cli("train", data, *TINY, "--steps", "2", "--out", broken, "--overwrite")
    assert code == 2 and "symbolic link to nothing" in stderr and "tokenizer" not in stderr


def test_epochs_grad_accum_and_keep_checkpoints(tmp_path):
    data = corpus(tmp_path)
    out = tmp_path / "out"
    code, stdout, stderr = cli(
        "train",
        data,
        *TINY,
        "--epochs",
        "0.5",
        "--grad-accum",
        "2",
        "--save-every",
        "1",
        "--keep-checkpoints",
        "2",
        "--out",
        out,
        "--json",
    )
    assert code == 0, stderr
    manifest = json.loads((out / "run.json").read_text())
    blocks = manifest["train_tokens"] // 32
    steps = math.ceil(0.5 * blocks / (4 * 2))
    assert json.loads(stdout)["steps"] == steps
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == [f"step-{steps - 1:08d}", f"step-{steps:08d}"]


@pytest.mark.parametrize("kind", ["char", "bytes"])
def test_char_and_bytes_tokenizers_round_trip(kind):
    from gptcli.training.tokenizer import encode_documents, make_tokenizer

    texts = ["Hello, world!\nSecond line\n", "Café 日本"]
    tok = make_tokenizer(kind, texts, vocab_size=1000)
    if kind == "char":
        assert len(tok) == len(set("".join(texts))) + 1
    else:
        assert len(tok) == 257
    for text, ids in zip(texts, encode_documents(tok, texts)):
        assert tok.decode(ids) == text
    if kind == "bytes":
        assert len(encode_documents(tok, ["é"])[0]) == 2  # two UTF-8 bytes


def test_llama_char_model(tmp_path):
    path = tmp_path / "shake.txt"
    path.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 40, encoding="utf-8")
    out = tmp_path / "out"
    code, stdout, stderr = cli(
        "train", path, *TINY, "--arch", "llama", "--tokenizer-type", "char", "--steps", "4", "--out", out, "--json"
    )
    assert code == 0, stderr
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["vocab_size"] == len(set(path.read_text())) + 1


def test_gpt2_preset_has_the_124m_shape():
    import torch
    from transformers import AutoModelForCausalLM

    from gptcli.training.presets import PRESETS, build_config

    config = build_config("gpt2", PRESETS["gpt2"], 50257, 50256)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == 124_439_808  # GPT-2 small


def test_schedule_warmup_cosine_floor():
    from gptcli.training.optim import lr_lambda

    f = lr_lambda(steps=2000, warmup=100, schedule="cosine", min_ratio=0.1)
    assert f(0) == pytest.approx(1 / 101)
    assert f(99) == pytest.approx(100 / 101)
    assert f(100) == pytest.approx(1.0)
    assert f(1050) == pytest.approx(0.55)  # halfway through the decay
    assert f(2000) == pytest.approx(0.1)


def test_sampler_covers_each_epoch_once_and_depends_only_on_the_step():
    from gptcli.training.sampler import BlockSampler

    s = BlockSampler(n_blocks=10, batch_size=3, grad_accum=1, world_size=1, rank=0, seed=1)
    seen = [int(i) for step in range(10) for i in s.indices(step, 0)]  # 30 samples = 3 epochs
    for e in range(3):
        assert sorted(seen[e * 10 : (e + 1) * 10]) == list(range(10))
    again = BlockSampler(10, 3, 1, 1, 0, seed=1)
    assert [int(i) for i in again.indices(7, 0)] == seen[21:24]
    # two processes split each step's samples without overlap
    r0, r1 = (BlockSampler(10, 2, 1, 2, r, seed=1) for r in (0, 1))
    assert set(map(int, r0.indices(0, 0))).isdisjoint(map(int, r1.indices(0, 0)))


def test_rich_progress_on_a_terminal(tmp_path):
    pexpect = pytest.importorskip("pexpect")
    import sys

    from conftest import cli_env

    data = corpus(tmp_path)
    env = cli_env()
    env.pop("NO_COLOR", None)
    env["TERM"] = "xterm-256color"
    child = pexpect.spawn(
        sys.executable,
        ["-m", "gptcli", "train", str(data), *TINY, "--steps", "8", "--out", str(tmp_path / "out")],
        env=env,
        timeout=120,
    )
    child.expect(pexpect.EOF)
    child.close()
    text = child.before.decode(errors="replace")
    assert child.exitstatus == 0, text
    assert "\x1b[" in text and "8/8" in text  # a Rich bar with colours, not plain lines
    assert "step 8/8 | loss" not in text


def test_rich_bar_shows_the_eta_when_progress_updates_are_far_apart(monkeypatch):
    import io

    from rich.console import Console

    from gptcli import console
    from gptcli.training.progress import Reporter

    now = [0.0]  # a fake clock for Rich: a progress update every 40 s, beyond its 30 s speed window
    fake = Console(file=io.StringIO(), force_terminal=True, width=200, get_time=lambda: now[0])
    monkeypatch.setattr(console, "color_enabled", lambda stream=None: True)
    monkeypatch.setattr(console, "err_console", lambda: fake)
    reporter = Reporter(total=100, start=0, enabled=True)
    try:
        for step in (1, 2):
            now[0] += 40.0
            reporter.step(step, 3.0, 1e-3, 100.0, eta_s=(100 - step) * 40.0)
        bar = reporter._bar
        shown = Console(file=io.StringIO(), width=200, color_system=None)
        with shown.capture() as capture:
            shown.print(bar.make_tasks_table(bar.tasks))
    finally:
        reporter.close()
    assert "2/100" in capture.get() and "eta 1h05m20s" in capture.get() and "-:--:--" not in capture.get()


def test_no_escape_codes_off_a_terminal(trained):
    _, stdout, stderr = trained
    assert "\x1b" not in stderr and "\x1b" not in stdout


def test_val_data_and_reused_tokenizer(tmp_path, gpt2_dir):
    data = corpus(tmp_path)
    held_out = corpus(tmp_path, lines=60, name="held.txt", seed=9)
    out = tmp_path / "out"
    code, stdout, err = cli(
        "train", data, *TINY, "--val-data", held_out, "--tokenizer", gpt2_dir, "--steps", "3", "--out", out, "--json"
    )
    assert code == 0, err
    from gptcli.loading import load_tokenizer

    tok = load_tokenizer(gpt2_dir)
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["val_data"][0]["path"].endswith("held.txt")
    ids = tok(data.read_text(), add_special_tokens=False)["input_ids"]
    assert manifest["train_tokens"] == (len(ids) + 1 - 1) // 32 * 32  # the whole file trains (plus one end-of-text)
    assert (
        json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
        == json.loads((gpt2_dir / "tokenizer.json").read_text())["model"]["vocab"]
    )
    assert json.loads(stdout)["best_val_loss"] is not None


def test_later_epochs_cut_windows_at_a_new_offset():
    from gptcli.training.sampler import BlockSampler

    T, L = 8, 8 * 10 + 1  # 10 blocks of 8 tokens (+1 for the last target)
    s = BlockSampler(n_blocks=10, batch_size=5, grad_accum=1, world_size=1, rank=0, seed=2, block_size=T, stream_len=L)
    first = [int(p) for step in (0, 1) for p in s.starts(step, 0)]
    assert sorted(first) == [i * T for i in range(10)]  # epoch 0: the block grid
    later = [int(p) for step in (2, 3) for p in s.starts(step, 0)]
    shift = s.shift(1)
    assert 0 < shift < T  # seed 2 draws a non-zero shift
    assert sorted(later) == sorted(min(i * T + shift, L - T - 1) for i in range(10))


def test_a_run_resolves_its_device_once_and_the_job_carries_it(tmp_path, monkeypatch):
    """runner.setup resolves the runtime; the engine and run.json use that one, not a second resolution."""
    from gptcli import runtime
    from gptcli.training import engine

    calls, jobs = [], []
    resolve, run = runtime.resolve_device, engine.run
    monkeypatch.setattr(runtime, "resolve_device", lambda spec: calls.append(spec) or resolve(spec))
    monkeypatch.setattr(engine, "run", lambda job, **kw: jobs.append(job) or run(job, **kw))
    data = corpus(tmp_path, lines=120)
    code, _, err = cli("train", data, *TINY, "--steps", "2", "--out", tmp_path / "run")
    assert code == 0, err
    assert len(calls) == 1  # before: three (runtime, engine, run.json)
    assert str(jobs[0].runtime.device) == "cpu" and (jobs[0].rank, jobs[0].world_size) == (0, 1)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["device"] == "cpu"


def test_the_step_hook_sees_every_step(tmp_path, monkeypatch):
    """Job.after_step: the seam tests use to slow training down (tests/slow_steps.py), read by no environment."""
    from gptcli.training import engine

    steps, run = [], engine.run

    def hooked(job, **kw):
        job.after_step = steps.append
        return run(job, **kw)

    monkeypatch.setattr(engine, "run", hooked)
    code, _, err = cli("train", corpus(tmp_path, lines=120), *TINY, "--steps", "3", "--out", tmp_path / "run")
    assert code == 0, err
    assert steps == [1, 2, 3]


@pytest.mark.parametrize("command", ["train", "finetune"])
def test_every_option_reaches_the_settings(command, monkeypatch):
    """The command line hands each given option to the settings under the setting's name (nothing via locals())."""
    import inspect
    import typing
    from pathlib import Path

    from gptcli.cli import train as cli_train
    from gptcli.training import runner
    from gptcli.training.settings import FIELD_NAMES

    seen = {}

    class Given(Exception):
        pass

    def capture(cli, config_path, name):
        seen.update(cli)
        raise Given

    monkeypatch.setattr(runner, "settings_from", capture)
    fn = getattr(cli_train, command)
    hints = typing.get_type_hints(fn)
    values = {}
    for name in inspect.signature(fn).parameters:  # a given (non-default) value for every option
        kind = str(hints[name])
        values[name] = (
            True
            if "bool" in kind and "Optional" not in kind
            else ["x"]
            if "list" in kind
            else Path("p")
            if "Path" in kind
            else 1
            if "int" in kind or "float" in kind
            else "x"
        )
    with pytest.raises(Given):
        fn(**values)
    expected = {{"data_format": "format"}.get(n, n) for n in values} - {"config", "as_json"}
    assert set(seen) == expected and expected <= FIELD_NAMES


def test_one_context_length_rule():
    """train, finetune and the inference commands share one rule: config, else tokenizer, else 2048."""
    from types import SimpleNamespace

    from transformers import GPT2Config, LlamaConfig

    from gptcli.loading import context_length

    assert context_length(GPT2Config(n_positions=64)) == 64
    assert context_length(LlamaConfig(max_position_embeddings=128)) == 128
    assert context_length(SimpleNamespace(), SimpleNamespace(model_max_length=512)) == 512
    assert context_length(SimpleNamespace(), SimpleNamespace(model_max_length=1 << 30)) == 2048
    assert context_length(SimpleNamespace()) == 2048
