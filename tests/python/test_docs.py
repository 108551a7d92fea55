"""The docs site (mkdocs.yml, docs/) and the README's links.

`make test` builds the site strict. These tests prove that the strict build fails on each fault
it is there to catch (a broken link, a broken anchor, a `:::` API entry whose name is gone),
each named in the build's output, on a copy of the real docs and config; that every public name
of `torchspark` has an API entry; and that the README's links into docs/ resolve."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from markdown.extensions.toc import slugify

ROOT = Path(__file__).resolve().parents[2]
API_PAGE = ROOT / "docs" / "api" / "python.md"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _docs_copy(tmp_path: Path) -> Path:
    """The real mkdocs.yml, docs/ and python/ sources (mkdocstrings reads them), copied."""
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copytree(
        ROOT / "python" / "torchspark",
        tmp_path / "python" / "torchspark",
        ignore=shutil.ignore_patterns("lib", "jars", "__pycache__", "*.so", "*.jar"),
    )
    return tmp_path


def _build(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(root / "mkdocs.yml")],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        # Material's banner about MkDocs 2.0, printed on every build, says nothing about ours.
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


def _api_entries() -> list[str]:
    return re.findall(r"^::: *([\w.]+)\s*$", API_PAGE.read_text(), flags=re.M)


def test_strict_build_fails_naming_a_broken_link_and_a_broken_anchor(tmp_path):
    root = _docs_copy(tmp_path)
    index = root / "docs" / "index.md"
    index.write_text(
        index.read_text()
        + "\nSee [a page that is gone](no-such-page.md) and"
        + " [a section that is gone](cluster.md#no-such-section).\n"
    )
    done = _build(root)
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert "no-such-page.md" in out, out
    assert "no-such-section" in out, out


def test_strict_build_fails_naming_an_api_entry_whose_name_is_gone(tmp_path):
    root = _docs_copy(tmp_path)
    page = root / "docs" / "api" / "python.md"
    page.write_text(page.read_text() + "\n::: torchspark.session.no_such_function\n")
    done = _build(root)
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert "torchspark.session.no_such_function" in out, out


def test_every_public_name_has_an_api_entry_that_resolves():
    import torchspark

    entries = _api_entries()
    by_name = {e.rsplit(".", 1)[1]: e for e in entries}
    missing = [n for n in torchspark.__all__ if n not in by_name]
    assert not missing, f"docs/api/python.md has no `::: ...` entry for {missing}"
    for name in torchspark.__all__:
        module, attr = by_name[name].rsplit(".", 1)
        assert hasattr(importlib.import_module(module), attr), by_name[name]


def _anchors(page: Path) -> set[str]:
    """The heading ids mkdocs gives a page (its toc extension's slugify, as in mkdocs.yml)."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    heads = re.findall(r"^#{1,6} +(.+?) *$", text, flags=re.M)
    plain = [re.sub(r"[`*]", "", h) for h in heads]
    return {slugify(h, "-") for h in plain}


def test_readme_links_resolve():
    """mkdocs checks the links inside docs/; the README is outside the site, so this checks its
    links: each file exists, and each `page.md#anchor` names a heading of that page."""
    text = re.sub(r"^```.*?^```", "", (ROOT / "README.md").read_text(), flags=re.M | re.S)
    bad = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        page = ROOT / "README.md" if not path else (ROOT / path).resolve()
        if not page.exists():
            bad.append(f"{target}: no file {page}")
        elif anchor and page.suffix == ".md" and anchor not in _anchors(page):
            bad.append(f"{target}: no heading with id {anchor!r} in {page.name}")
    assert not bad, "\n".join(bad)


def test_scala_api_page_links_where_make_docs_puts_the_scaladoc():
    """The ScalaDoc link is raw HTML (mkdocs does not check it): it must point, from the built
    page (`use_directory_urls: false` puts docs/api/scala.md at site/api/scala.html), to the
    folder the Makefile's docs target copies the ScalaDoc into."""
    config = (ROOT / "mkdocs.yml").read_text()
    assert re.search(r"^use_directory_urls: false$", config, flags=re.M)
    recipe = (ROOT / "Makefile").read_text().split("\ndocs:", 1)[1].split("\n\n", 1)[0]
    dest = re.search(r"cp -r \S+ (site/\S+)", recipe).group(1)
    href = re.search(r'href="([^"]+)"', (ROOT / "docs/api/scala.md").read_text()).group(1)
    built_page = Path("site/api/scala.html")
    assert (built_page.parent / href).resolve() == (Path(dest) / "index.html").resolve()
