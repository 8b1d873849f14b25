"""Copy a trained model folder into the package as a bundled model (float16 weights + card).

    python recipes/bundle_model.py RUN_DIR gptcli/bundled/NAME --card card.json [--eval-data FILE]

Weights are stored as float16 safetensors (half the bytes of float32; gptcli loads them
in the runtime's dtype). The card (gptcli-model.json) gets the parameter count and, from
RUN_DIR/run.json or metrics.jsonl when present, the best validation loss.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

KEEP = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("dest", type=Path)
    ap.add_argument("--card", type=Path, required=True, help="JSON with description, trained_on, license, ...")
    ap.add_argument("--license-file", type=Path, help="data licence/attribution text copied beside the model")
    args = ap.parse_args()

    import torch
    from safetensors.torch import load_file, save_file

    src, dest = args.run_dir, args.dest
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in KEEP:
        if (src / name).is_file():
            shutil.copy2(src / name, tmp / name)
    tensors = {}
    for f in sorted(src.glob("*.safetensors")):
        tensors.update(load_file(f))
    params = sum(t.numel() for t in tensors.values())
    save_file(
        {k: v.to(torch.float16).contiguous() for k, v in tensors.items()},
        tmp / "model.safetensors",
        metadata={"format": "pt"},
    )
    cfg = json.loads((tmp / "config.json").read_text())
    cfg["dtype"] = "float16"
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    card = json.loads(args.card.read_text())
    card["parameters"] = params
    if args.license_file:
        shutil.copy2(args.license_file, tmp / "DATA-LICENSE.txt")
    (tmp / "gptcli-model.json").write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    (dest / "model.safetensors").chmod(0o644)  # safetensors writes 0600; package data must be readable
    size = (dest / "model.safetensors").stat().st_size
    print(f"bundled {dest} ({params / 1e6:.2f} M parameters, {size / 1e6:.1f} MB of weights)")


if __name__ == "__main__":
    main()
