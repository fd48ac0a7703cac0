#!/usr/bin/env python3
"""Fails when the modules of a source directory (default fs/) include each
other in a cycle, when a header lacks a top comment saying what its module
owns, or when a file outside the FUSE layer includes a FUSE header.

A module is NAME.c with NAME.h (and NAME_int.h, its private header); an
edge A -> B means a file of A includes B's header. Usage:
    include_cycles.py [DIR]      exit 0 (prints the layers) or 1 (the problems)
"""
import os
import re
import sys

INCLUDE = re.compile(r'^\s*#\s*include\s+[<"]([^">]+)[">]', re.M)
# Only these files may see <fuse.h> / <fuse_opt.h>: the dispatcher, the
# option parser and main.
FUSE_LAYER = {"fuse_ops.c", "fuse_ops.h", "options.c", "main.c"}


def module_of(name):
    base = os.path.splitext(name)[0]
    return base[:-4] if base.endswith("_int") else base


def graph(d):
    files = sorted(f for f in os.listdir(d) if f.endswith((".c", ".h")))
    headers = {f for f in files if f.endswith(".h")}
    edges, problems = {}, []
    for f in files:
        text = open(os.path.join(d, f), encoding="utf-8").read()
        m = module_of(f)
        edges.setdefault(m, set())
        for inc in INCLUDE.findall(text):
            if inc in ("fuse.h", "fuse_opt.h", "fuse_lowlevel.h") and f not in FUSE_LAYER:
                problems.append(f"{d}/{f}: includes <{inc}> outside the FUSE layer")
            if inc in headers and module_of(inc) != m:
                edges[m].add(module_of(inc))
        if f.endswith(".h") and not text.lstrip().startswith("/*"):
            problems.append(f"{d}/{f}: no top comment saying what the module owns")
    return edges, problems


def cycles(edges):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def layers(edges):
    """Each module's depth: 0 includes no other module."""
    depth = {}

    def d(v):
        if v not in depth:
            depth[v] = 0
            depth[v] = 1 + max((d(w) for w in edges.get(v, ())), default=-1)
        return depth[v]

    for v in edges:
        d(v)
    return depth


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "fs")
    d = os.path.normpath(d)
    edges, problems = graph(d)
    for c in cycles(edges):
        problems.append(f"{d}: include cycle among modules: {' <-> '.join(c)}")
    if problems:
        print("\n".join(problems))
        return 1
    by = {}
    for m, n in layers(edges).items():
        by.setdefault(n, []).append(m)
    for n in sorted(by):
        print(f"layer {n}: {' '.join(sorted(by[n]))}")
    print(f"{d}: {len(edges)} modules, no include cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
