#!/usr/bin/env python3
"""Keeps the -STATUS lists of the header comments in step with the code.

For every function declared in include/ibrain/*.h whose doc comment lists negative HTTP
statuses it returns ("-400 malformed ..., -413 ..."), finds the function's definition in
the sources and collects the `return -NNN` statements of its body and of the static
functions of the same file it calls (transitively). Fails when the two sets differ.

Usage: contracts_status_lists.py [SOURCE_ROOT]   (default: this repository)
"""
import glob
import os
import re
import sys

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
STATUS = re.compile(r"(?<![\w-])-([45]\d\d)\b")
RETURN = re.compile(r"\breturn\s+-([45]\d\d)\s*;")
SOURCE_DIRS = ("dataplane", "controlplane", "tools", "perf")


def documented_lists():
    """(header, function, {statuses}) for each doc comment, directly above the declaration
    it documents, that lists -STATUS values."""
    out = []
    for h in sorted(glob.glob(os.path.join(root, "include", "ibrain", "*.h"))):
        lines = open(h, encoding="utf-8").read().split("\n")
        i = 0
        while i < len(lines):
            if "/*" not in lines[i]:
                i += 1
                continue
            j = i
            while "*/" not in lines[j]:
                j += 1
            comment = "\n".join(lines[i:j + 1])
            i = j + 1
            statuses = set(STATUS.findall(comment))
            if not statuses:
                continue
            decl = ""  # the declaration on the lines right after the comment
            for k in range(i, min(i + 4, len(lines))):
                if not lines[k].strip() or lines[k].lstrip().startswith(("/*", "#")):
                    break
                decl += lines[k] + " "
                if ";" in lines[k] or "{" in lines[k]:
                    break
            m = re.search(r"\b(\w+)\s*\(", decl)
            if m is None:
                print("%s:%d: a -STATUS list that documents no function declaration" % (os.path.relpath(h, root), j + 1))
                sys.exit(1)
            out.append((os.path.relpath(h, root), m.group(1), statuses))
    return out


def functions(text):
    """{name: body} of the top-level function definitions of a C file."""
    out = {}
    for m in re.finditer(r"^[A-Za-z_][\w \*]*?\b(\w+)\s*\([^;{]*\)\s*\{", text, re.M):
        start, depth, i = m.end() - 1, 0, m.end() - 1
        while i < len(text):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        out[m.group(1)] = text[start:i + 1]
    return out


def returned(name):
    """(file, {statuses}) returned by the definition of <name>, or (None, None)."""
    for d in SOURCE_DIRS:
        for c in sorted(glob.glob(os.path.join(root, d, "**", "*.c"), recursive=True)):
            text = open(c, encoding="utf-8", errors="replace").read()
            if not re.search(r"^[A-Za-z_][\w \*]*?\b%s\s*\([^;{]*\)\s*\{" % re.escape(name), text, re.M):
                continue
            fns = functions(text)
            seen, todo, statuses = set(), [name], set()
            while todo:
                f = todo.pop()
                if f in seen or f not in fns:
                    continue
                seen.add(f)
                body = fns[f]
                statuses |= set(RETURN.findall(body))
                todo += [g for g in re.findall(r"\b(\w+)\s*\(", body) if g in fns and g != f]
            return os.path.relpath(c, root), statuses
    return None, None


failures = 0
lists = documented_lists()
if not lists:
    print("contracts_status_lists: no -STATUS list found in include/ibrain/*.h")
    sys.exit(1)
for header, name, documented in lists:
    src, code = returned(name)
    if src is None:
        print("%s: %s documents -STATUS values but no definition was found" % (header, name))
        failures += 1
        continue
    doc = " ".join("-" + s for s in sorted(documented))
    got = " ".join("-" + s for s in sorted(code))
    if documented != code:
        print("%s: %s documents {%s} but %s returns {%s}" % (header, name, doc, src, got))
        failures += 1
    else:
        print("%s: %s: {%s} as in %s" % (header, name, doc, src))
sys.exit(1 if failures else 0)
