#!/usr/bin/env python3
"""Every ```yaml block of README.md and docs/*.md passes `wapphook check`.

A snippet is checked as written, in a folder of its own that holds what it names: the shipped
scripts (the real ones), the shipped plugins (the real builds), the docs' own C plugin
(compiled from docs/plugins.md), and for anything else a stand-in (an empty handler, a
command that exits 0, a self-signed certificate, a key file). An absolute path that does not
exist on this machine is moved under the folder. A fragment without `secrets:` or `hooks:`
gets `secrets: [{value: ...}]` and `hooks: {}` after it, since check needs both. A refusal
is reported as DOC:LINE with check's own words. Then the README's "first handler" is
followed as written: its script, registered where step 2 says, tried by step 3's command,
which must run the handlers the README shows, in that order.

usage: docs_snippets.py WAPPHOOK PROJECT_DIR PLUGIN_DIR CC
"""
import glob
import os
import re
import subprocess
import sys
import tempfile

wapphook, project, plugin_dir = (os.path.abspath(a) for a in sys.argv[1:4])
cc = sys.argv[4]

ABS = re.compile(r"(?<![\w.:/@])(/[A-Za-z_][\w.-]*(?:/[\w.-]+)+)")


def snippets():
    for doc in ["README.md"] + sorted(glob.glob(os.path.join(project, "docs", "*.md"))):
        path = os.path.join(project, doc)
        text = open(path).read()
        for m in re.finditer(r"^```yaml\n(.*?)^```", text, re.S | re.M):
            line = text.count("\n", 0, m.start()) + 2
            yield os.path.relpath(path, project), line, m.group(1)


def docs_plugin_source():
    text = open(os.path.join(project, "docs", "plugins.md")).read()
    m = re.search(r"^```c\n(.*?)^```", text, re.S | re.M)
    return m.group(1)


def stand_in(folder, path, kind, functions):
    full = path if os.path.isabs(path) else os.path.join(folder, path)
    if os.path.exists(full):
        return
    os.makedirs(os.path.dirname(full), exist_ok=True)
    name = os.path.basename(path)
    if kind == "lua":
        shipped = os.path.join(project, "scripts", path.split("scripts/", 1)[-1])
        if path.startswith("scripts/") and os.path.exists(shipped):
            os.symlink(shipped, full)
        else:
            with open(full, "w") as f:
                for fn in functions or ["handle"]:
                    f.write("function %s(event) end\n" % fn)
    elif kind == "plugin":
        if os.path.exists(os.path.join(plugin_dir, name)):
            os.symlink(os.path.join(plugin_dir, name), full)
        else:  # the plugin the docs write
            src = os.path.join(folder, "docs_plugin.c")
            with open(src, "w") as f:
                f.write(docs_plugin_source())
            subprocess.run([cc, "-shared", "-fPIC", "-Wall", "-Werror", "-Wno-unused-parameter",
                            "-I", os.path.join(project, "include"), "-o", full, src], check=True)
    elif kind == "exec":
        shipped = os.path.join(project, path)
        if not os.path.isabs(path) and os.path.exists(shipped):
            os.symlink(shipped, full)
        else:
            with open(full, "w") as f:
                f.write("#!/bin/sh\nexit 0\n")
            os.chmod(full, 0o755)
    elif kind == "certificate":
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                        "-subj", "/CN=localhost", "-keyout", full + ".key", "-out", full + ".crt"],
                       check=True, capture_output=True)
        with open(full, "w") as f:
            f.write(open(full + ".key").read() + open(full + ".crt").read())
    elif kind == "secret":
        with open(full, "w") as f:
            f.write("a-key-of-the-docs\n")
    elif kind == "spool":
        pass  # the folder is enough: check opens a SQLite spool, creates nothing


def prepare(folder, text):
    # absolute paths that do not exist here move under the folder
    root = os.path.join(folder, "root")

    def rebase(m):
        p = m.group(1)
        return p if os.path.exists(p) else root + p
    text = ABS.sub(rebase, text)
    functions = re.findall(r"^\s*function:\s*(\w+)", text, re.M)
    for kind, pat in [("lua", r"^\s*-?\s*lua:\s*(\S+)"), ("plugin", r"^\s*-?\s*plugin:\s*(\S+)"),
                      ("certificate", r"^\s*certificate:\s*(\S+)"),
                      ("secret", r"^\s*-\s*file:\s*(\S+)"),
                      ("spool", r"^\s*spool:\s*([^\s\"#]+)")]:
        for p in re.findall(pat, text, re.M):
            stand_in(folder, p, kind, functions + ["handle"])
    for items in re.findall(r"^\s*-?\s*(?:exec|allow):\s*\[([^\]]*)\]", text, re.M):
        for p in [i.strip() for i in items.split(",")]:
            if "/" in p and not re.match(r"^[\d.:]+/\d+$", p) and "*" not in p:
                stand_in(folder, p, "exec", None)
    for p in re.findall(r"\{path:\s*([^,}\s]+)", text):  # a plugin's output file: its folder
        full = p if os.path.isabs(p) else os.path.join(folder, p)
        os.makedirs(os.path.dirname(full), exist_ok=True)
    if not re.search(r"^secrets:", text, re.M):
        text += "\nsecrets: [{value: docs-test-secret}]\n"
    if not re.search(r"^hooks:", text, re.M):
        text += "\nhooks: {}\n"
    return text


failed = checked = 0
for doc, line, text in snippets():
    checked += 1
    with tempfile.TemporaryDirectory() as folder:
        manifest = os.path.join(folder, "hooks.yaml")
        with open(manifest, "w") as f:
            f.write(prepare(folder, text))
        r = subprocess.run([wapphook, "check", "-c", manifest], cwd=folder, capture_output=True,
                           text=True, env=dict(os.environ, WAPPCLOUD_SECRET="docs-test-secret"))
        if r.returncode != 0:
            failed += 1
            out = (r.stdout + r.stderr).strip()
            m = re.search(r"hooks\.yaml:(\d+):", out)
            at = "%s:%d" % (doc, line + int(m.group(1)) - 1) if m else "%s:%d" % (doc, line)
            print("FAIL %s: %s" % (at, out.replace(folder + "/", "")))
        else:
            print("ok   %s:%d" % (doc, line))


def first_handler():
    """The README's "first handler": its script, registered as step 2 says, run by step 3."""
    global failed
    readme = open(os.path.join(project, "README.md")).read()
    script = re.search(r"cat > scripts/greet\.lua <<'LUA'\n(.*?)^LUA$", readme, re.S | re.M)
    step2 = re.search(r"after `- lua: scripts/incoming_message\.lua`, add the line\n#\s+(- lua: \S+)",
                      readme)
    step3 = re.search(r"^(\./build/wapphook try .*)$", readme, re.M)
    # the report the README shows below step 3, up to the end of its code block
    block = readme[step3.end():readme.find("```", step3.end())] if step3 else ""
    shown = re.findall(r"^# (lua:\S+|plugin:\S+)  ok  ", block, re.M)
    if not (script and step2 and step3 and shown):
        print("FAIL README.md: the first-handler steps are not where this test looks")
        failed += 1
        return
    with tempfile.TemporaryDirectory() as folder:
        os.makedirs(os.path.join(folder, "scripts"))
        for f in os.listdir(os.path.join(project, "scripts")):
            os.symlink(os.path.join(project, "scripts", f), os.path.join(folder, "scripts", f))
        with open(os.path.join(folder, "scripts", "greet.lua"), "w") as f:
            f.write(script.group(1))
        os.makedirs(os.path.join(folder, "build", "run"))
        os.symlink(plugin_dir, os.path.join(folder, "build", "plugins"))
        stand_in(folder, "build/run/server.pem", "certificate", None)
        example = open(os.path.join(project, "hooks.yaml.example")).read()
        at = re.search(r"^(\s*)- lua: scripts/incoming_message\.lua.*\n", example, re.M)
        example = example[:at.end()] + at.group(1) + step2.group(1) + "\n" + example[at.end():]
        with open(os.path.join(folder, "hooks.yaml.example"), "w") as f:
            f.write(example)
        argv = step3.group(1).split()
        r = subprocess.run([wapphook] + argv[1:], cwd=folder, capture_output=True, text=True)
        ran = re.findall(r"^(lua:\S+|plugin:\S+)  ok  ", r.stdout, re.M)
        if r.returncode != 0 or ran != shown or "you said: hello from the sample" not in r.stdout:
            print("FAIL README.md: the first handler: exit %d, ran %s, the README shows %s\n%s%s"
                  % (r.returncode, ran, shown, r.stdout, r.stderr))
            failed += 1
        else:
            print("ok   README.md: the first handler, tried as its steps say: %s" % ", ".join(ran))


def slug(heading):
    """GitHub's anchor for a heading."""
    h = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", h).replace(" ", "-")


def links():
    """Every relative link of the docs names a file that exists, and a heading it has."""
    global failed
    n = 0
    for doc in ["README.md"] + sorted(glob.glob(os.path.join(project, "docs", "*.md"))):
        path = os.path.join(project, doc)
        text = re.sub(r"^```.*?^```", "", open(path).read(), flags=re.S | re.M)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            n += 1
            file, _, anchor = target.partition("#")
            dest = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
            where = os.path.relpath(path, project)
            if not os.path.exists(dest):
                print("FAIL %s: a link to %s, which does not exist" % (where, target))
                failed += 1
            elif anchor and dest.endswith(".md"):
                heads = [slug(h) for h in re.findall(r"^#+ (.*)$", open(dest).read(), re.M)]
                if anchor not in heads:
                    print("FAIL %s: a link to %s, a heading %s does not have" % (where, target, file or where))
                    failed += 1
    print("ok   %d relative links" % n)


def manual():
    """contrib/man/wapphook.1 names every command and option `wapphook --help` lists."""
    global failed
    page = open(os.path.join(project, "contrib", "man", "wapphook.1")).read().replace("\\-", "-")
    usage = subprocess.run([wapphook, "--help"], capture_output=True, text=True).stdout
    commands = re.findall(r"^  ([a-z]+)[ ,]", usage.split("commands:")[1].split("\n\n")[0], re.M)
    options = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", usage))
    missing = [c for c in commands if not re.search(r"\.(?:B|BR|TP)[^\n]*\b%s\b" % c, page)]
    missing += [o for o in sorted(options) if o not in page]
    if not commands or missing:
        print("FAIL contrib/man/wapphook.1: lacks %s (commands seen: %s)" % (missing, commands))
        failed += 1
    else:
        print("ok   contrib/man/wapphook.1: %d commands, %d options of --help" % (len(commands), len(options)))


first_handler()
links()
manual()
print("%d snippets checked, %d failed" % (checked, failed))
if checked == 0:
    print("no yaml snippet found: the docs moved?")
    sys.exit(1)
sys.exit(1 if failed else 0)
