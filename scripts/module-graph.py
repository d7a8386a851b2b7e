#!/usr/bin/env python3
"""Imports between the worker library's modules, and the cycles among them.

Reads worker/src (or the directory given), takes every `crate::<module>`
path outside comments (in `use` lines, `use crate::{a, b::c}` groups and
inline paths) as an edge from the file's top-level module to <module>, and
prints the edge count and the strongly connected components (import
circles) with more than one member.

    python3 scripts/module-graph.py [worker/src] [--edges] [--check]

With --check it exits 1 when there is an import circle (the worker's
modules depend downward only; worker/tests/module_graph.rs runs it).
"""
import os
import re
import sys


def module_of(root, path):
    rel = os.path.relpath(path, root)
    first = rel.split(os.sep)[0]
    return first[:-3] if first.endswith(".rs") else first


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def group_heads(body):
    """Top-level names of a `{a, b::c, d::{e, f}}` use group."""
    heads, depth, current = [], 0, ""
    for ch in body:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            heads.append(current)
            current = ""
            continue
        if depth == 0:
            current += ch
    heads.append(current)
    return [re.split(r"::|\s", h.strip())[0] for h in heads if h.strip()]


def references(text):
    names = set()
    for match in re.finditer(r"crate::\{", text):
        start, depth = match.end(), 1
        end = start
        while end < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            end += 1
        names.update(group_heads(text[start : end - 1]))
    names.update(re.findall(r"crate::([a-z_][a-z0-9_]*)", text))
    return names


def graph(root):
    modules = set()
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if name.endswith(".rs") and name not in ("lib.rs", "main.rs"):
            modules.add(name[:-3])
        elif os.path.isfile(os.path.join(path, "mod.rs")):
            modules.add(name)
    edges = set()
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            if not name.endswith(".rs"):
                continue
            source = module_of(root, path)
            if source not in modules:
                continue
            with open(path, encoding="utf-8") as f:
                text = strip_comments(f.read())
            for target in references(text):
                if target in modules and target != source:
                    edges.add((source, target))
    return modules, edges


def components(modules, edges):
    """Tarjan's strongly connected components."""
    succ = {m: sorted(t for s, t in edges if s == m) for m in modules}
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in succ[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for m in sorted(modules):
        if m not in index:
            visit(m)
    return out


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    root = args[0] if args else os.path.join(os.path.dirname(__file__), "..", "worker", "src")
    modules, edges = graph(root)
    print(f"modules: {len(modules)}")
    print(f"edges (module -> module it names via crate::): {len(edges)}")
    if "--edges" in sys.argv:
        for s, t in sorted(edges):
            print(f"  {s} -> {t}")
    cycles = sorted((c for c in components(modules, edges) if len(c) > 1), key=len, reverse=True)
    if not cycles:
        print("import circles: none")
    for c in cycles:
        print(f"import circle of {len(c)}: {', '.join(c)}")
    if cycles and "--check" in sys.argv:
        print(
            "module-graph: the worker's modules must depend downward only; "
            "move what the modules of a circle share into the lower one (--edges lists the imports)",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
