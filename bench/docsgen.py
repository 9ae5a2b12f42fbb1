"""A docs-like site for the publish benchmark: nested html pages, css and js, text that
compresses like a real documentation build (about 4:1 with gzip), generated quickly from a
seed so every run publishes the same bytes.
"""

from __future__ import annotations

import itertools
import random
import string
from pathlib import Path

HEAD = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} &#8212; Project documentation</title>
<link rel="stylesheet" href="{up}_static/pygments.css" type="text/css">
<link rel="stylesheet" href="{up}_static/theme.css" type="text/css">
<script src="{up}_static/documentation_options.js"></script>
<script src="{up}_static/searchtools.js"></script>
</head>
<body>
<div class="related" role="navigation" aria-label="related navigation">
<ul><li><a href="{up}genindex.html" title="General Index">index</a></li>
<li><a href="{up}py-modindex.html" title="Python Module Index">modules</a> |</li>
<li class="nav-item nav-item-0"><a href="{up}index.html">Project documentation</a></li></ul>
</div>
<div class="document"><div class="documentwrapper"><div class="bodywrapper"><div class="body">
<section id="{anchor}"><h1>{title}<a class="headerlink" href="#{anchor}">&#182;</a></h1>
"""
FOOT = """</section></div></div></div>
<div class="sphinxsidebar" role="navigation"><h3>Navigation</h3><ul>
{nav}</ul></div></div>
<div class="footer">&#169; Copyright. Built with <a href="https://www.sphinx-doc.org/">Sphinx</a>
using a theme. Build {build}.</div>
</body>
</html>
"""


class Words:
    """A Zipf-like vocabulary: a few words are everywhere, most are rare."""

    def __init__(self, rng: random.Random, size: int = 6000) -> None:
        letters = string.ascii_lowercase
        self.words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 11)))
                      for _ in range(size)]
        self.cum_weights = list(itertools.accumulate(1.0 / (rank + 1) ** 0.9
                                                     for rank in range(size)))
        self.rng = rng

    def take(self, n: int) -> list[str]:
        return self.rng.choices(self.words, cum_weights=self.cum_weights, k=n)


def _paragraph(w: Words, rng: random.Random) -> str:
    words = w.take(rng.randint(25, 90))
    for i in range(0, len(words), rng.randint(7, 15)):
        kind = rng.random()
        if kind < 0.3:
            words[i] = f"<code class=\"docutils literal\">{words[i]}_{rng.randint(0, 999)}</code>"
        elif kind < 0.45:
            words[i] = f"<a class=\"reference internal\" href=\"{words[i]}.html#{words[i]}\">" \
                       f"{words[i]}</a>"
    return "<p>" + " ".join(words).capitalize() + ".</p>\n"


def _code_block(w: Words, rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(3, 14)):
        a, b, c = w.take(3)
        lines.append(f"<span class=\"n\">{a}</span> <span class=\"o\">=</span> "
                     f"<span class=\"n\">{b}</span><span class=\"p\">.</span>"
                     f"<span class=\"n\">{c}</span><span class=\"p\">(</span>"
                     f"<span class=\"mi\">{rng.randint(0, 99999)}</span>"
                     f"<span class=\"p\">)</span>")
    return "<div class=\"highlight\"><pre>" + "\n".join(lines) + "</pre></div>\n"


def html_page(w: Words, rng: random.Random, title: str, depth: int, size: int) -> bytes:
    up = "../" * depth
    parts = [HEAD.format(title=title, up=up, anchor=title.lower().replace(" ", "-"))]
    total = len(parts[0])
    while total < size:
        chunk = _code_block(w, rng) if rng.random() < 0.25 else _paragraph(w, rng)
        if rng.random() < 0.1:
            chunk = f"<h2>{' '.join(w.take(3)).title()}</h2>\n" + chunk
        parts.append(chunk)
        total += len(chunk)
    nav = "".join(f"<li><a href=\"{up}{x}.html\">{x}</a></li>\n" for x in w.take(12))
    parts.append(FOOT.format(nav=nav, build=rng.getrandbits(64)))
    return "".join(parts).encode()


def css_file(w: Words, rng: random.Random, size: int) -> bytes:
    props = ["color", "margin", "padding", "border", "font-size", "line-height", "display",
             "background-color", "width", "max-width", "text-align", "font-weight"]
    out, total = [], 0

    def value() -> str:
        return rng.choice([f"#{rng.getrandbits(24):06x}", f"{rng.randint(0, 64)}px",
                           f"{rng.randint(0, 100)}%", "auto", "none", "inherit"])

    while total < size:
        sel = ".".join(w.take(rng.randint(1, 3)))
        body = "; ".join(f"{rng.choice(props)}: {value()}" for _ in range(rng.randint(1, 6)))
        rule = f"div.{sel} {{ {body} }}\n"
        out.append(rule)
        total += len(rule)
    return "".join(out).encode()


def js_file(w: Words, rng: random.Random, size: int) -> bytes:
    out, total = [], 0
    while total < size:
        name, arg, other, key = w.take(4)
        stmt = (f"function {name}_{rng.randint(0, 999)}({arg}) {{\n"
                f"  var {other} = {arg}.{key} || {rng.randint(0, 10000)};\n"
                f"  if ({other} > {rng.randint(0, 100)}) {{ return \"{' '.join(w.take(4))}\"; }}\n"
                f"  return {arg}.{name}({other});\n}}\n")
        out.append(stmt)
        total += len(stmt)
    return "".join(out).encode()


def generate_site(root: Path, files: int, total_bytes: int, seed: int = 7) -> int:
    """Write ``files`` files (about ``total_bytes`` in all) under ``root``; nested dirs,
    an index.html at the top. Returns the bytes written."""
    rng = random.Random(seed)
    w = Words(rng)
    mean = total_bytes / files
    # Directories: a few sections, each with nested sub-sections, like an API reference.
    dirs = [Path("_static"), Path("_images")]
    for a in range(12):
        sec = Path(f"section{a}")
        dirs.append(sec)
        for b in range(rng.randint(2, 6)):
            sub = sec / f"{''.join(w.take(1))}{b}"
            dirs.append(sub)
            for c in range(rng.randint(0, 4)):
                dirs.append(sub / f"module{c}" / rng.choice(["api", "examples", "guide"]))
    written = 0
    names: set[Path] = set()
    for i in range(files):
        if i == 0:
            rel, depth = Path("index.html"), 0
        else:
            folder = rng.choice(dirs) if rng.random() > 0.03 else Path(".")
            kind = rng.random()
            ext = ".html" if kind < 0.8 else (".css" if kind < 0.88 else ".js")
            if folder.parts and folder.parts[0] == "_static" and kind < 0.8:
                ext = rng.choice([".css", ".js"])
            rel = folder / f"{'_'.join(w.take(2))}_{i}{ext}"
            depth = len(folder.parts) if str(folder) != "." else 0
        names.add(rel)
        size = max(200, int(rng.lognormvariate(0, 0.8) * mean / 1.377))  # E[lognorm] = 1.377
        if rel.suffix == ".html":
            data = html_page(w, rng, rel.stem.replace("_", " ").title(), depth, size)
        elif rel.suffix == ".css":
            data = css_file(w, rng, size)
        else:
            data = js_file(w, rng, size)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written += len(data)
    return written
