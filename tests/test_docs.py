"""The project's documentation is self-contained: every link in its Markdown resolves inside the repository.

Relative links and images must name an existing file or folder in the repository (and a ``#anchor`` into a
Markdown file must name one of its headings, slugged as GitHub does); absolute links are checked for
syntax only (no network). Neither the docs nor the code cite files that live outside the repository.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections import Counter
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Folders that hold no documentation of the project: tool state, environments, build and run outputs.
SKIP_DIRS = {"__pycache__", "node_modules", "venv", "build", "dist", "runs", "outputs", "cxmind-demo"}
#: Jinja templates render into other repositories (the Hub); tests/test_hub.py checks the rendered card.
TEMPLATES = ROOT / "cxmind" / "templates"
#: References to material outside the repository that the project once cited (the sibling reference
#: folder, its specs and its design document), spelt in pieces so this guard does not cite them itself.
_SIBLING = "shared"
OUTSIDE = (f"../{_SIBLING}", f"{_SIBLING}/specs", "DESIGN" + ".md")


def _markdown_files() -> list[Path]:
    found = []
    for folder, dirs, files in os.walk(ROOT):
        here = Path(folder)
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".")
            and d not in SKIP_DIRS
            and not d.endswith(".egg-info")
            and here / d != TEMPLATES
        )
        found += [here / f for f in sorted(files) if f.lower().endswith(".md")]
    return found


MARKDOWN = _markdown_files()

_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target "title") and ![alt](target); text may hold one level of brackets ([`a`][b] style)
_INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^\s()]*(?:\([^\s()]*\)[^\s()]*)*)")
_REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.M)
_AUTOLINK = re.compile(r"<((?:https?|ftp|file|mailto):[^>\s]+)>")
_BARE_URL = re.compile(r"(?<![\w(<\[/])https?://[^\s<>()\[\]]+")  # GitHub links these too
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code spans blanked."""
    lines, fenced = [], None
    for line in text.splitlines():
        fence = _FENCE.match(line)
        if fence and (fenced is None or line.lstrip().startswith(fenced)):
            fenced = None if fenced else fence.group(1)
            continue
        if fenced is None:
            lines.append(_INLINE_CODE.sub(lambda m: " " * len(m.group(0)), line))
    return lines


def links(text: str) -> list[str]:
    """Every link and image target of a Markdown text, outside code."""
    prose = "\n".join(_prose_lines(text))
    targets = [m.group(1) for m in _INLINE_LINK.finditer(prose)]
    targets += [m.group(1) for m in _REFERENCE_DEF.finditer(prose)]
    targets += [m.group(1) for m in _AUTOLINK.finditer(prose)]
    targets += [m.group(0).rstrip(".,;:!?*_~'\"") for m in _BARE_URL.finditer(prose)]
    return [t[1:-1] if t.startswith("<") and t.endswith(">") else t for t in targets]


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: Markdown markup dropped, lowercased, punctuation and
    symbols removed (letters, digits, marks, ``_`` and ``-`` stay), spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    kept = (c for c in text.lower() if c in " -_" or unicodedata.category(c)[0] in "LNM")
    return "".join(kept).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The heading anchors of a Markdown file (a repeated slug gets -1, -2, ... as on GitHub)."""
    seen: Counter[str] = Counter()
    found = set()
    for line in _prose_lines(text):
        match = _HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        found.add(f"{slug}-{seen[slug]}" if seen[slug] else slug)
        seen[slug] += 1
    return found


def link_problem(source: Path, target: str) -> str | None:
    """Why ``target`` (a link in ``source``) is broken, or None."""
    if not target:
        return "empty link"
    parts = urlsplit(target)
    if parts.scheme in ("http", "https"):
        host = parts.hostname or ""
        if " " in target or "." not in host or not re.fullmatch(r"[A-Za-z0-9.-]+", host):
            return "malformed URL"
        return None
    if parts.scheme == "mailto":
        return None if "@" in parts.path else "malformed mailto"
    if parts.scheme or parts.netloc:
        return f"{parts.scheme or 'network'} links leave the repository"
    path, fragment = unquote(parts.path), unquote(parts.fragment)
    if path.startswith("/"):
        return "absolute path: link relative to the file instead"
    resolved = (source.parent / path).resolve() if path else source
    if not resolved.is_relative_to(ROOT):
        return "points outside the repository"
    if not resolved.exists():
        return "no such file"
    if not fragment or resolved.suffix.lower() != ".md":
        return None
    if fragment.lower() not in anchors(resolved.read_text(encoding="utf-8")):
        return f"no heading #{fragment} in {resolved.relative_to(ROOT).as_posix()}"
    return None


# ---------------------------------------------------------------------------------------------
# The checker itself
# ---------------------------------------------------------------------------------------------


def test_the_docs_are_found() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in MARKDOWN}
    assert {"README.md", "docs/architecture.md", "docs/rewards.md", "recipes/README.md"} <= names
    assert not any(name.startswith(("cxmind/templates/", ".git/", ".venv/")) for name in names)


def test_link_extraction_skips_code_and_reads_every_link_form() -> None:
    text = (
        'See [a](docs/a.md#x) and ![img](img/b.png "title"), [`code`](c.md), [w](https://x.org/a_(b)).\n'
        "Not `[this](ignored.md)`.\n"
        "```bash\n[nor](this.md)\n```\n"
        "[ref]: ref/target.md\n"
        "<https://example.org/auto>\n"
        "Bare: https://example.org/bare, then text.\n"
    )
    assert links(text) == [
        "docs/a.md#x",
        "img/b.png",
        "c.md",
        "https://x.org/a_(b)",
        "ref/target.md",
        "https://example.org/auto",
        "https://example.org/bare",
    ]


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("Reproducing CX-Mind on your GPUs", "reproducing-cx-mind-on-your-gpus"),
        ("§5 Reference mode", "5-reference-mode"),
        ("Rewards (CuRL-VPR)", "rewards-curl-vpr"),
        ("The `cxmind.eval` module", "the-cxmindeval-module"),
        ("Data (`cxmind/data`)", "data-cxminddata"),
        ("A [link](x.md) and **bold**", "a-link-and-bold"),
        ("snake_case and ✅ marks", "snake_case-and--marks"),
    ],
)
def test_github_slugs(heading: str, slug: str) -> None:
    assert github_slug(heading) == slug


def test_repeated_headings_get_numbered_anchors() -> None:
    assert anchors("# Notes\n## Notes\n```\n# not a heading\n```\n### Notes\n") == {
        "notes",
        "notes-1",
        "notes-2",
    }


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("README.md", None),
        ("docs/rewards.md#5-reference-mode", None),
        ("#documentation", None),
        ("recipes/accelerate/", None),
        ("docs/rewards.md#no-such-heading", "no heading"),
        ("docs/missing.md", "no such file"),
        ("../elsewhere/notes.md", "outside the repository"),
        ("/etc/passwd", "absolute path"),
        ("file:///etc/passwd", "leave the repository"),
        ("https://github.com/huggingface/trl", None),
        ("https://exa mple.org", "malformed URL"),
        ("https:///nohost", "malformed URL"),
    ],
)
def test_link_problems(target: str, problem: str | None) -> None:
    found = link_problem(ROOT / "README.md", target)
    assert found is None if problem is None else problem in (found or ""), found


# ---------------------------------------------------------------------------------------------
# The project's docs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_link_resolves_inside_the_repository(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    broken = [f"{t}: {why}" for t in links(text) if (why := link_problem(path, t)) is not None]
    assert not broken, broken


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_docs_cite_nothing_outside_the_repository(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert not [s for s in OUTSIDE if s in text]


def test_readme_links_the_docs() -> None:
    targets = set(links((ROOT / "README.md").read_text(encoding="utf-8")))
    assert {"docs/architecture.md", "docs/rewards.md", "recipes/README.md"} <= targets
    assert "recipes/cxmind-qwen2.5-vl-7b/recipe-no-vllm.yaml" in targets


def test_reference_mode_links_the_public_reference_code() -> None:
    """Wherever ``mode="reference"`` is explained, the public code it reproduces is linked."""
    url = "https://github.com/SII-zyj/CX-Mind-private"
    for doc in ("README.md", "docs/rewards.md", "docs/architecture.md", "recipes/README.md"):
        assert url in links((ROOT / doc).read_text(encoding="utf-8")), doc
    assert url in (ROOT / "cxmind" / "rewards" / "reference.py").read_text(encoding="utf-8")


def test_readme_installs_the_gpu_extras_it_reproduces_with() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Reproducing CX-Mind") :]
    assert 'pip install ".[vllm,flash,deepspeed]"' in section
    assert "recipe-no-vllm.yaml" in section and "--backend hf" in section


def _code_files() -> list[Path]:
    files = []
    for folder in ("cxmind", "benchmarks", "scripts", "recipes"):
        files += [
            p
            for p in sorted((ROOT / folder).rglob("*"))
            if p.is_file()
            and p.suffix in (".py", ".sh", ".yaml", ".yml", ".md", "")
            and "__pycache__" not in p.parts
        ]
    return files


def test_code_cites_nothing_outside_the_repository() -> None:
    cited = {
        p.relative_to(ROOT).as_posix(): [
            s for s in (f"{_SIBLING}/", "DESIGN" + ".md") if s in p.read_text(errors="replace")
        ]
        for p in _code_files()
    }
    assert not {k: v for k, v in cited.items() if v}
