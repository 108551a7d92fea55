"""Fails when rust/core's top-level modules import each other in a circle.

Each `crate::NAME` path in a file's code (`use` lines and inline paths; comments and strings
are skipped) is an edge from the file's top-level module (`src/engine/merge.rs` -> `engine`,
`src/sys.rs` -> `sys`) to NAME. The floors of lib.rs's doc must form a graph without cycles:
this prints every cycle found (as `a -> b -> a`) and exits 1, else prints the order bottom-up.
Usage: python tools/check_import_circles.py [SRC_DIR]  (default rust/core/src)
"""

import re
import sys
from pathlib import Path

PATH = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
RAW = re.compile(r'b?r(#*)"')
# A char literal ('x', '\n', '\u{1F600}'), not a lifetime ('a).
CHAR = re.compile(r"'(?:\\(?:u\{[0-9a-fA-F]+\}|x[0-9a-fA-F]{2}|.)|[^\\'])'")
# `crate::{a, b::C}` groups.
GROUP = re.compile(r"\bcrate::\{([^}]*)\}", re.S)


def code_of(text: str) -> str:
    """The code without comments, strings and char literals (doc comments name paths freely)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif (m := RAW.match(text, i)) and (
            i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")
        ):
            end = text.find('"' + m.group(1), m.end())
            i = n if end < 0 else end + 1 + len(m.group(1))
            out.append('""')
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            out.append('""')
        elif c == "'" and (m := CHAR.match(text, i)):
            i = m.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)


def module_of(src: Path, file: Path) -> str:
    rel = file.relative_to(src)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def graph(src: Path) -> dict[str, set[str]]:
    modules = {module_of(src, f) for f in src.rglob("*.rs")} - {"lib"}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for f in src.rglob("*.rs"):
        here = module_of(src, f)
        if here == "lib":
            continue
        code = code_of(f.read_text())
        names = set(PATH.findall(code))
        for group in GROUP.findall(code):
            names |= {g.strip().split("::")[0] for g in group.split(",") if g.strip()}
        edges[here] |= {n for n in names if n in modules and n != here}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def path_in(edges: dict[str, set[str]], component: list[str]) -> str:
    """One circle through the component's first module, as `a -> b -> a`."""
    start = component[0]
    inside = set(component)
    seen = {start}
    frontier = [[start]]
    while frontier:
        nxt = []
        for p in frontier:
            for w in sorted(edges[p[-1]] & inside):
                if w == start:
                    return " -> ".join(p + [start])
                if w not in seen:
                    seen.add(w)
                    nxt.append(p + [w])
        frontier = nxt
    return " -> ".join(component)


def main() -> int:
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "rust/core/src")
    edges = graph(src)
    found = cycles(edges)
    for component in found:
        print(f"import circle among {', '.join(component)}: {path_in(edges, component)}")
    if found:
        return 1
    order: list[str] = []
    left = dict(edges)
    while left:
        ready = sorted(m for m, deps in left.items() if not (deps & set(left)))
        order += ready
        for m in ready:
            del left[m]
    print("no import circle in", src, "; bottom-up:", " < ".join(order))
    return 0


if __name__ == "__main__":
    sys.exit(main())
