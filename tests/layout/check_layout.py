#!/usr/bin/env python3
"""The house rules of core/ (docs/development.md, "Layout"), checked on the source tree:

1. A file includes another folder's header only through that folder's door.
2. Within a folder, headers are included by their bare name, and exist there.
3. Folders depend on each other only downwards, in the order of LAYERS: no folder includes
   one above it, so there is no circle between folders.
4. No circle between files either (a header including, through others, itself).
5. Every folder of core/ is described in docs/development.md.
6. Comments and docs cite docs/, never a SPEC outside the repository.

Usage: check_layout.py PROJECT_DIR. Prints each breach as FILE:LINE: reason; exit 1 if any.
"""
import os
import re
import sys

# each folder and its door, from the bottom up: a folder may include the doors below it
LAYERS = [
    ("base", "base/base.h"),
    ("conf", "conf/conf.h"),
    ("lua", "lua/wl.h"),
    ("spool", "spool/spool.h"),
    ("runtime", "runtime/runtime.h"),
    ("console", "console/console.h"),
    ("http", "http/http.h"),
]
RANK = {folder: i for i, (folder, _) in enumerate(LAYERS)}
DOOR = dict(LAYERS)
# outside the rules: the TLS shims are separate libraries with no wapphook includes
EXEMPT = {"compat"}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def main(root):
    core = os.path.join(root, "core")
    problems = []
    graph = {}  # file (relative to core/) -> files it includes

    def where(rel, text, pos):
        return "core/%s:%d" % (rel, text.count("\n", 0, pos) + 1)

    folders = sorted(d for d in os.listdir(core) if os.path.isdir(os.path.join(core, d)))
    for d in folders:
        if d not in DOOR and d not in EXEMPT:
            problems.append("core/%s/: a folder with no place in LAYERS (tests/layout/"
                            "check_layout.py) and no door" % d)
    for dirpath, _, names in os.walk(core):
        for name in names:
            if not name.endswith((".c", ".h")):
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), core)
            folder = rel.split("/")[0] if "/" in rel else None  # None: core/main.c
            if folder in EXEMPT:
                continue
            text = open(os.path.join(dirpath, name), encoding="utf-8").read()
            graph[rel] = []
            for m in INCLUDE.finditer(text):
                inc = m.group(1)
                at = where(rel, text, m.start())
                if "/" not in inc:
                    target = os.path.join(folder, inc) if folder else inc
                    if not os.path.exists(os.path.join(core, target)):
                        problems.append("%s: \"%s\" is not in this folder: include another "
                                        "folder's door by its path" % (at, inc))
                        continue
                    graph[rel].append(target)
                    continue
                tf = inc.split("/")[0]
                if tf == folder:
                    problems.append("%s: \"%s\": a header of the same folder is included by "
                                    "its bare name" % (at, inc))
                elif tf not in DOOR:
                    problems.append("%s: \"%s\": no such folder with a door" % (at, inc))
                    continue
                elif inc != DOOR[tf]:
                    problems.append("%s: \"%s\" is not %s's door: include \"%s\"" %
                                    (at, inc, tf, DOOR[tf]))
                elif folder is not None and RANK[tf] >= RANK[folder]:
                    problems.append("%s: %s includes %s, a folder at or above it (%s): data "
                                    "flows one way" % (at, folder, tf,
                                                       " < ".join(f for f, _ in LAYERS)))
                graph[rel].append(inc)

    # circles between files: depth-first search with colours
    state = {}
    stack = []

    def visit(f):
        state[f] = 1
        stack.append(f)
        for g in graph.get(f, []):
            if state.get(g) == 1:
                cycle = stack[stack.index(g):] + [g]
                problems.append("core/%s: an include circle: %s" % (g, " -> ".join(cycle)))
            elif g in graph and not state.get(g):
                visit(g)
        stack.pop()
        state[f] = 2

    for f in sorted(graph):
        if not state.get(f):
            visit(f)

    dev = open(os.path.join(root, "docs", "development.md"), encoding="utf-8").read()
    for d in folders:
        if not re.search(r"^core/%s/ +\S" % re.escape(d), dev, re.M):
            problems.append("docs/development.md: core/%s/ is not described (a line \"core/%s/"
                            "  what it holds\" in its Layout section)" % (d, d))

    spec = re.compile(r"\bSPEC\b(?!\.md)")
    for top in ("core", "include", "plugins", "scripts", "tests", "bench", "docs"):
        for dirpath, _, names in os.walk(os.path.join(root, top)):
            for name in names:
                if not name.endswith((".c", ".h", ".lua", ".sh", ".py", ".md", ".txt")):
                    continue
                path = os.path.join(dirpath, name)
                if os.path.abspath(path) == os.path.abspath(__file__):
                    continue
                text = open(path, encoding="utf-8", errors="replace").read()
                for m in spec.finditer(text):
                    problems.append("%s:%d: cites SPEC: cite the docs/ page instead" %
                                    (os.path.relpath(path, root),
                                     text.count("\n", 0, m.start()) + 1))

    for p in problems:
        print(p)
    print("%d files, %d folders: %s" % (len(graph), len(folders),
                                         "ok" if not problems else "%d problems" % len(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "."))
