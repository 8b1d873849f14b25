"""Regenerate completions/ from the CLI. Run after any change to commands or options:

python tools/gen_completions.py          # rewrite the files
python tools/gen_completions.py --check  # exit 1 if they are stale (the test does this)
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Render from the checkout this script lives in, not whichever gptcli is installed.
sys.path.insert(0, str(ROOT))

from gptcli.cli.app import app  # noqa: E402
from gptcli.completions import SHELLS, render  # noqa: E402

OUT = ROOT / "completions"
FILES = {"bash": "gptcli.bash", "zsh": "_gptcli", "fish": "gptcli.fish"}


def main() -> int:
    check = "--check" in sys.argv
    stale = []
    for shell in SHELLS:
        path = OUT / FILES[shell]
        text = render(app, shell)
        if check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
        else:
            OUT.mkdir(exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print(
            "stale completion scripts: " + ", ".join(stale) + "; run python tools/gen_completions.py", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
