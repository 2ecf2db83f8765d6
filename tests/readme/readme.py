#!/usr/bin/env python3
"""The README layer: runs every ```sql block of README.md and of the documentation
pages, in order, in one psql session against a database holding the demo deal
(as a user pastes them after ./scripts/demo), and fails on any error, and on any
block whose output differs from the ```text block shown right after it.

    python3 tests/readme/readme.py README.md docs/README.md -- psql -X -d deal_store_readme
    README_FILL=1 python3 …   # rewrites the ```text blocks with the output they get

A documentation index (docs/README.md) stands for the pages it links to, in
the order it lists them (the reference and the development pages hold no
examples and are left out).

psql's "psql:file:line: " prefix of messages is dropped and trailing blanks
are ignored; everything else must match line for line."""
import os
import re
import subprocess
import sys
import tempfile

FENCE = re.compile(r"^```(\w*)\n(.*?)^```[ \t]*$", re.M | re.S)
PREFIX = re.compile(r"^psql:[^:]*:\d+: ")


def blocks(readme):
    """(line, sql, the text block shown right after it or None) for every sql block, in order."""
    found = list(FENCE.finditer(readme))
    for i, m in enumerate(found):
        if m.group(1) != "sql":
            continue
        shown = None
        nxt = found[i + 1] if i + 1 < len(found) else None
        if nxt and nxt.group(1) == "text" and readme[m.end():nxt.start()].strip() == "":
            shown = nxt
        yield readme.count("\n", 0, m.start()) + 1, m.group(2), shown


def lines(text):
    out = [PREFIX.sub("", line).rstrip() for line in text.split("\n")]
    while out and out[-1] == "":
        out.pop()
    while out and out[0] == "":
        out.pop(0)
    return out


def output(got, n):
    """What block n printed."""
    return got.get(n, "").split("@@end")[0]


def fill(readme_path, readme, todo, got):
    """Writes each block's output into the ```text block shown after it."""
    out, last = [], 0
    for n, (_, _, shown) in todo:
        if shown is not None:
            out.append(readme[last:shown.start(2)] + "\n".join(lines(output(got, n))) + "\n")
            last = shown.end(2)
    out.append(readme[last:])
    open(readme_path, "w", encoding="utf-8").write("".join(out))


LINK = re.compile(r"\]\(([^)#]+\.md)(#[^)]*)?\)")


def pages(paths):
    """The files to run, in order: an index (docs/README.md) expands to its pages."""
    out = []
    for path in paths:
        if os.path.basename(os.path.dirname(os.path.abspath(path))) == "docs" and os.path.basename(path) == "README.md":
            base = os.path.dirname(path)
            for m in LINK.finditer(open(path, encoding="utf-8").read()):
                page = os.path.normpath(os.path.join(base, m.group(1)))
                rel = os.path.relpath(page, base)
                if rel == "reference.md" or rel.startswith("development") or rel.startswith(".."):
                    continue
                if page not in out:
                    out.append(page)
        else:
            out.append(path)
    return out


def main():
    split = sys.argv.index("--")
    files, psql = pages(sys.argv[1:split]), sys.argv[split + 1:]
    texts = {f: open(f, encoding="utf-8").read() for f in files}
    # every block of every file, numbered in one sequence
    todo = []
    for f in files:
        for line, sql, shown in blocks(texts[f]):
            todo.append((f, line, sql, shown))
    script = "".join(f"\\echo '@@block {n}'\n{sql}\n" for n, (_, _, sql, _) in enumerate(todo)) + "\\echo '@@end'\n"
    with tempfile.NamedTemporaryFile("w", suffix=".sql", encoding="utf-8") as t:
        t.write(script)
        t.flush()
        run = subprocess.run(psql + ["-f", t.name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, check=False)
    parts = re.split(r"^@@block (\d+)\n", run.stdout, flags=re.M)
    got = {int(parts[i]): parts[i + 1] for i in range(1, len(parts) - 1, 2)}
    failures = 0
    for n, (f, line, sql, shown) in enumerate(todo):
        out = output(got, n)
        errors = [l for l in lines(out) if re.match(r"^(ERROR|FATAL|PANIC):", l)]
        if n not in got:
            errors.append("the block did not run")
        if errors:
            failures += 1
            print(f"{f}:{line}: the block fails:\n  " + "\n  ".join(errors))
        if os.environ.get("README_SHOW"):
            print(f"=== {f}:{line}\n" + "\n".join(lines(out)))
        if not errors and shown is not None and lines(out) != lines(shown.group(2)):
            failures += 1
            print(f"{f}:{line}: the output differs from the one shown\n--- shown\n" + "\n".join(lines(shown.group(2)))
                  + "\n--- got\n" + "\n".join(lines(out)))
    if os.environ.get("README_FILL"):
        for f in files:
            fill(f, texts[f], [(n, (l, q, sh)) for n, (ff, l, q, sh) in enumerate(todo) if ff == f], got)
    with_output = sum(1 for *_, shown in todo if shown is not None)
    print(f"documentation: {len(files)} files, {len(todo)} SQL blocks run, {with_output} with their output compared, {failures} failed")
    sys.exit(1 if failures or run.returncode not in (0, 3) else 0)


if __name__ == "__main__":
    main()
