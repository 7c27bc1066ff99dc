#!/usr/bin/env python3
"""Every C file of the project is as clang-format (.clang-format at the top) would write it.

Usage: check_format.py PROJECT_DIR. Lists each file that differs; exit 1 if any does. Fix with
`clang-format -i FILE` (Debian's clang-format, which `make deps` installs).
"""
import os
import shutil
import subprocess
import sys

TOPS = ("core", "include", "plugins", "tests", "bench")


def main(root):
    tool = shutil.which("clang-format")
    if not tool:
        print("clang-format is missing: make deps installs it")
        return 1
    files = []
    for top in TOPS:
        for dirpath, _, names in os.walk(os.path.join(root, top)):
            files += [os.path.join(dirpath, n) for n in sorted(names) if n.endswith((".c", ".h"))]
    bad = []
    for f in files:
        with open(f, "rb") as fh:
            before = fh.read()
        after = subprocess.run([tool, "--style=file", "--assume-filename=" + f],
                               input=before, capture_output=True, check=True,
                               cwd=root).stdout
        if after != before:
            bad.append(os.path.relpath(f, root))
    for f in bad:
        print("%s: not as clang-format writes it (clang-format -i %s)" % (f, f))
    print("%d files, %s" % (len(files), "ok" if not bad else "%d to format" % len(bad)))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "."))
