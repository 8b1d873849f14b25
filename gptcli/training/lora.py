"""LoRA adapters through peft, with target modules chosen per architecture."""

from __future__ import annotations

from typing import Any

from gptcli.errors import UsageError

# The attention and MLP projections of each architecture (peft's own defaults cover attention only).
TARGETS: dict[str, list[str]] = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "gptj": ["q_proj", "k_proj", "v_proj", "out_proj", "fc_in", "fc_out"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "bloom": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "falcon": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
}


def module_names(model: Any) -> set[str]:
    """Last name component of every module that has weights (what peft matches against)."""
    return {name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if name and hasattr(mod, "weight")}


def choose_targets(model: Any, requested: list[str]) -> list[str] | str:
    model_type = getattr(model.config, "model_type", "")
    present = module_names(model)
    if requested:
        missing = [t for t in requested if t not in present]
        if missing:
            raise UsageError(
                f"--lora-targets {', '.join(missing)}: no such module in this {model_type or 'model'}.",
                hint=f"Its modules with weights: {', '.join(sorted(present))}.",
            )
        return list(requested)
    if model_type in TARGETS:
        targets = [t for t in TARGETS[model_type] if t in present]
        if targets:
            return targets
    return "all-linear"  # peft's generic choice: every linear layer except the output head


def wrap(model: Any, *, r: int, alpha: float, dropout: float, targets: list[str], base_name: str) -> Any:
    import warnings

    from peft import LoraConfig, get_peft_model

    chosen = choose_targets(model, targets)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,  # type: ignore[arg-type]  # annotated int; any number works
        lora_dropout=dropout,
        target_modules=chosen,
        task_type="CAUSAL_LM",
        fan_in_fan_out=getattr(model.config, "model_type", "") == "gpt2",
    )  # gpt2's Conv1D stores W^T
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            peft_model = get_peft_model(model, config)
        except ValueError as exc:
            raise UsageError(
                f"--lora: {str(exc).splitlines()[0]}", hint="Name the modules to adapt with --lora-targets."
            ) from exc
    peft_model.peft_config["default"].base_model_name_or_path = base_name
    return peft_model
