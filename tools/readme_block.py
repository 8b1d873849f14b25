"""Print the shell commands of a marked block in README.md, so CI runs exactly what users read.

    python3 tools/readme_block.py install   # the lines between <!-- install:begin --> and <!-- install:end -->

The block is one fenced ```bash code block between the two markers (the begin marker may carry a
note: <!-- install:begin (...) -->). Exit 1 when the block is missing or malformed. Standard
library only: CI runs it before anything is installed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def block(text: str, name: str) -> str:
    pattern = re.compile(
        r"<!-- "
        + re.escape(name)
        + r":begin\b[^>]*-->\n```(?:bash|sh)\n(.*?)\n```\n<!-- "
        + re.escape(name)
        + r":end -->",
        re.S,
    )
    found = pattern.findall(text)
    if len(found) != 1:
        raise ValueError(
            f"README.md must hold exactly one '{name}' block (a ```bash block between its markers); found {len(found)}"
        )
    return found[0] + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: readme_block.py NAME", file=sys.stderr)
        return 2
    try:
        sys.stdout.write(block(README.read_text(encoding="utf-8"), argv[0]))
    except ValueError as exc:
        print(f"readme_block.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
