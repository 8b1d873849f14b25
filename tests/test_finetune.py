"""`gptcli finetune`: full and LoRA, merged or as an adapter, on text, prompt/completion and chat data."""

from __future__ import annotations

import json

import pytest
from test_train_support import cli, corpus, metrics, weights

FAST = ["--batch-size", "4", "--threads", "1", "--block-size", "32"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|endoftext|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def chat_llama(tmp_path_factory):
    from tiny import build_model

    return build_model(tmp_path_factory.mktemp("chat-llama"), "llama", chat_template=CHAT_TEMPLATE)


def _qa(folder, n=80):
    path = folder / "qa.jsonl"
    path.write_text(
        "".join(
            json.dumps({"prompt": f"Tom has {i} cats. How many?", "completion": f" {i} cats."}) + "\n" for i in range(n)
        ),
        encoding="utf-8",
    )
    return path


def _chats(folder, n=80):
    path = folder / "chat.jsonl"
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"Say {i}"},
                {"role": "assistant", "content": f"{i}!"},
            ]
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_full_finetune_on_text_changes_every_weight_and_loads(tmp_path, gpt2_dir):
    out = tmp_path / "out"
    code, stdout, err = cli(
        "finetune",
        corpus(tmp_path),
        "--model",
        gpt2_dir,
        *FAST,
        "--steps",
        "20",
        "--lr",
        "3e-3",
        "--out",
        out,
        "--json",
    )
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["command"] == "finetune" and summary["steps"] == 20
    before, after = weights(gpt2_dir), weights(out)
    assert before.keys() == after.keys()
    assert all(not (before[k] == after[k]).all() for k in before if "attn.c_attn.weight" in k)
    vals = [r["val_loss"] for r in metrics(out) if "val_loss" in r]
    assert vals[-1] < vals[0]
    code, gen_out, gen_err = cli("generate", "Tom", "--model", out, "-t", "3", "--json")
    assert code == 0, gen_err


def test_completion_masks_only_the_completion(tmp_path, gpt2_dir):
    from gptcli.loading import load_tokenizer
    from gptcli.training import packing, sft

    tok = load_tokenizer(gpt2_dir, padding_side="right")
    records = [{"prompt": "Tom saw", "completion": " a cat.", "__line__": 1}]
    ids, masks = sft.completion_examples(tok, records)
    n_prompt = len(tok("Tom saw", add_special_tokens=False)["input_ids"])
    n_completion = len(tok(" a cat.", add_special_tokens=False)["input_ids"])
    assert masks[0] == [False] * n_prompt + [True] * n_completion
    stream, mask = packing.stream(ids * 4, tok.eos_token_id, masks * 4)
    blocks = packing.Blocks(stream, mask, block_size=len(stream) - 1)
    import torch

    x, y = blocks.batch(torch.tensor([0]))
    # targets: completion tokens and the end-of-text after each example; the first prompt token is never a target
    assert int((y != packing.IGNORE).sum()) == 4 * (n_completion + 1) - 0
    assert tok.decode([t for t in y[0].tolist() if t != packing.IGNORE][:n_completion]) == " a cat."


def test_chat_masks_only_assistant_replies(chat_llama):
    from gptcli.loading import load_tokenizer
    from gptcli.training import sft

    tok = load_tokenizer(chat_llama, padding_side="right")
    rec = {
        "messages": [
            {"role": "user", "content": "Say hi"},
            {"role": "assistant", "content": "Hello there"},
            {"role": "user", "content": "Again"},
            {"role": "assistant", "content": "Hi"},
        ],
        "__line__": 1,
    }
    ids, masks = sft.chat_examples(tok, [rec])
    targets = tok.decode([t for t, m in zip(ids[0], masks[0]) if m])
    assert targets == "Hello there<|endoftext|>Hi<|endoftext|>"
    context = tok.decode([t for t, m in zip(ids[0], masks[0]) if not m])
    assert "Say hi" in context and "Again" in context and "Hello" not in context


def test_lora_adapter_on_chat_data_loads_with_model(tmp_path, chat_llama):
    out = tmp_path / "adapter"
    code, stdout, err = cli(
        "finetune",
        _chats(tmp_path),
        "--model",
        chat_llama,
        "--lora",
        "--lora-r",
        "4",
        *FAST,
        "--steps",
        "15",
        "--lr",
        "1e-2",
        "--out",
        out,
        "--json",
    )
    assert code == 0, err
    assert "trainable" in err
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    assert adapter["r"] == 4 and adapter["base_model_name_or_path"] == str(chat_llama)
    assert not (out / "model.safetensors").exists()
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["format"] == "chat"
    vals = [r["val_loss"] for r in metrics(out) if "val_loss" in r]
    assert vals[-1] < vals[0]
    code, gen_out, gen_err = cli("generate", "Say 3", "--model", out, "-t", "3", "--json")
    assert code == 0, gen_err


def test_lora_merge_writes_a_plain_model(tmp_path, gpt2_dir):
    out = tmp_path / "merged"
    code, _, err = cli(
        "finetune",
        _qa(tmp_path),
        "--model",
        gpt2_dir,
        "--lora",
        "--merge",
        *FAST,
        "--steps",
        "6",
        "--lr",
        "1e-2",
        "--out",
        out,
    )
    assert code == 0, err
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    merged, base = weights(out), weights(gpt2_dir)
    assert merged.keys() == base.keys()  # no lora_A / lora_B tensors left
    assert not (merged["transformer.h.0.attn.c_attn.weight"] == base["transformer.h.0.attn.c_attn.weight"]).all()
    assert (merged["transformer.wte.weight"] == base["transformer.wte.weight"]).all()  # embeddings were frozen
    code, _, gen_err = cli("generate", "Tom has 3 cats.", "--model", out, "-t", "3")
    assert code == 0, gen_err


def test_lora_resume_from_a_checkpoint_is_exact(tmp_path, gpt2_dir):
    args = ["--model", gpt2_dir, "--lora", *FAST, "--steps", "6", "--save-every", "3", "--lr", "1e-2"]
    data = _qa(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli("finetune", data, *args, "--out", a)[0] == 0
    code, _, err = cli("finetune", data, *args, "--out", b, "--resume", a / "checkpoints" / "step-00000003")
    assert code == 0, err
    wa, wb = weights(a), weights(b)  # the final adapters
    assert wa.keys() == wb.keys() and any("lora_A" in k for k in wa)
    assert all((wa[k] == wb[k]).all() for k in wa)


def test_chat_data_needs_a_chat_template(tmp_path, gpt2_dir):
    code, _, err = cli("finetune", _chats(tmp_path), "--model", gpt2_dir, *FAST, "--out", tmp_path / "o")
    assert code == 1 and "has no chat template" in err


def test_completion_record_missing_field(tmp_path, gpt2_dir):
    data = tmp_path / "qa.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c"}\n', encoding="utf-8")
    code, _, err = cli("finetune", data, "--model", gpt2_dir, *FAST, "--out", tmp_path / "o")
    assert code == 1 and 'line 2 needs a string "completion" field' in err


def test_a_few_examples_train_without_validation_unless_a_split_is_asked_for(tmp_path, gpt2_dir):
    data = _qa(tmp_path, n=8)
    args = ["--model", gpt2_dir, "--batch-size", "4", "--threads", "1", "--steps", "2"]
    code, stdout, err = cli("finetune", data, *args, "--out", tmp_path / "a", "--json")
    assert code == 0, err
    assert "no validation: the default --val-split" in err and "Error" not in err
    assert json.loads(stdout)["best_val_loss"] is None
    assert json.loads((tmp_path / "a" / "run.json").read_text())["val_tokens"] == 0
    code, stdout, err = cli("finetune", data, *args, "--val-split", "0.05", "--out", tmp_path / "b")
    assert code == 2 and stdout == "" and "Error: the validation split" in err  # asked for: still an error
    assert not (tmp_path / "b").exists()


def test_lora_on_a_bundled_base_saves_quietly_and_loads_with_peft_alone(tmp_path):
    import warnings

    from gptcli import bundled

    out = tmp_path / "adapter"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = cli(
            "finetune",
            _qa(tmp_path),
            "--model",
            "tinystories",
            "--lora",
            *FAST,
            "--steps",
            "2",
            "--save-every",
            "1",
            "--out",
            out,
        )
    assert code == 0, err
    noisy = [str(w.message) for w in caught if "peft" in w.filename]
    assert noisy == [] and "Warning" not in err  # peft looked the base up on the Hub at every save
    base = bundled.path_of("tinystories")
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    record = json.loads((out / "run.json").read_text())
    assert record["signature"] == "gptcli-run/1" and record["format"] == "completion"  # two keys, no clash
    assert "adapter_model.safetensors" in record["outputs"] and "README.md" in record["outputs"]
    from peft import AutoPeftModelForCausalLM

    model = AutoPeftModelForCausalLM.from_pretrained(out)  # peft alone, offline: the base is a folder
    assert any("lora_A" in name for name, _ in model.named_parameters())
    # an adapter made by gptcli installed elsewhere still finds the bundled base through gptcli
    moved = json.loads((out / "adapter_config.json").read_text())
    moved["base_model_name_or_path"] = str(tmp_path / "old-venv" / "gptcli" / "bundled" / "tinystories")
    (out / "adapter_config.json").write_text(json.dumps(moved), encoding="utf-8")
    code, _, gen_err = cli("generate", "Tom has 3 cats.", "--model", out, "-t", "2")
    assert code == 0, gen_err


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_dropout_flag_trains_as_a_model_built_with_that_dropout(tmp_path, gpt2_dir, llama_dir, arch):
    """--dropout changes the loaded model's own dropouts: the run equals finetuning a copy whose
    config says that dropout, and the written config records it."""
    import shutil

    base = gpt2_dir if arch == "gpt2" else llama_dir
    keys = ["resid_pdrop", "embd_pdrop", "attn_pdrop"] if arch == "gpt2" else ["attention_dropout"]
    edited = tmp_path / "edited"
    shutil.copytree(base, edited)
    config = json.loads((edited / "config.json").read_text())
    assert all(config[k] != 0.3 for k in keys)
    config.update(dict.fromkeys(keys, 0.3))
    (edited / "config.json").write_text(json.dumps(config))
    data = corpus(tmp_path)
    runs = {}
    for name, model, extra in [("flag", base, ["--dropout", "0.3"]), ("edited", edited, []), ("plain", base, [])]:
        out = tmp_path / f"out-{name}"
        code, _, err = cli(
            "finetune", data, "--model", model, *FAST, "--steps", "3", "--lr", "3e-3", "--out", out, *extra
        )
        assert code == 0, err
        runs[name] = weights(out)
    assert all((runs["flag"][k] == runs["edited"][k]).all() for k in runs["flag"])
    assert any(not (runs["flag"][k] == runs["plain"][k]).all() for k in runs["flag"])
    written = json.loads((tmp_path / "out-flag" / "config.json").read_text())
    assert all(written[k] == 0.3 for k in keys)
