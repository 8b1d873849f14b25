"""The README and docs/ point only at things that exist: relative links (and their #anchors), and the
repository scripts and data files they name in code (the docs moved out of README.md, the recipes out of
benchmarks/ and tools/; a stale path would send a reader nowhere)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "recipes" / "README.md"]

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# A path into the repository's script and data folders, as named in commands and code spans.
REPO_PATH = re.compile(
    r"(?<![\w./-])((?:benchmarks|tools|recipes|tests|docs|completions)/[\w./-]*\w\.(?:py|sh|tsv|json|txt|md))"
)


def _slug(heading: str) -> str:
    # GitHub's anchor for a heading: lower case, punctuation dropped (letters, digits, '-', '_' and spaces kept), spaces to '-'.
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _prose_and_code(text: str) -> tuple[str, str]:
    """Split a page into prose (where links count) and code (fenced blocks and `spans`)."""
    prose, code = [], []
    for i, part in enumerate(re.split(r"^```.*$", text, flags=re.M)):
        (code if i % 2 else prose).append(part)
    prose_text = "\n".join(prose)
    code.extend(re.findall(r"`([^`\n]+)`", prose_text))
    return re.sub(r"`[^`\n]+`", "", prose_text), "\n".join(code)


def _anchors(page: Path) -> set[str]:
    outside_fences = re.split(r"^```.*$", page.read_text(encoding="utf-8"), flags=re.M)[::2]
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", "\n".join(outside_fences), flags=re.M):
        slug = _slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    assert page.is_file()
    prose, _ = _prose_and_code(page.read_text(encoding="utf-8"))
    broken = []
    for target in LINK.findall(prose):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_repository_files_exist(page):
    _, code = _prose_and_code(page.read_text(encoding="utf-8"))
    missing = sorted({p for p in REPO_PATH.findall(code) if not (ROOT / p).exists()})
    assert not missing, f"{page.relative_to(ROOT)} names files that do not exist: {missing}"


def test_slug_matches_github():
    assert _slug("`gptcli train` and `gptcli finetune`") == "gptcli-train-and-gptcli-finetune"
    assert _slug("Models, devices and dtypes") == "models-devices-and-dtypes"
    assert _slug("The bundled English→French model") == "the-bundled-englishfrench-model"
