"""HTML to text: the product's converter next to the candidates, side by side in one run.

    python bench/html_to_text.py --gitbugs $DATA/gitbugs --before /tmp/before --runs 7 \\
        > bench/results/html_to_text.txt

Candidates (a library that is not installed is reported as such and left out):

- ``tickets/html.py``: the product's linear tokenizer; ``document`` layout for helpdesk
  HTML, ``source lines`` (the worker's ``html`` step, ``strip_html``) for bug-tracker text;
- ``--before DIR``: the two converters this one replaced, from an older checkout
  (``mkdir /tmp/before && git archive <commit> producer worker | tar -x -C /tmp/before``):
  the hand-written tokenizer of ``producer/webhooks/html.py`` and the ``html.parser`` one of
  ``worker/text.py`` (with its tag check);
- ``html2text``, ``inscriptis`` and ``selectolax`` (lexbor): ``.text(separator="\\n")``, and
  lexbor's tree walked (without recursion) into the product's own line writer, which keeps
  the product's layout and isolates the parser. Install them in a bench venv only:
  ``pip install html2text inscriptis selectolax``.

Inputs: (a) the HTML fields of the webhook samples in tests/fixtures (Freshdesk
``ticket_description``, Zammad ``article.body``); (b) GitBugs descriptions (``--gitbugs DIR``:
the ``*_bugs.csv`` files under it): those that hold HTML by the product's check, as the
worker's step sees them, and all of them as a helpdesk editor would send them (a ``<div>`` per
line, text escaped: a bigger body of helpdesk-like HTML than the two samples); (c) the
adversarial inputs of the hardening tests at growing sizes up to the 200,000-character body cap,
each call in a child process with a time limit. Text kept is counted in words against a
reference: Chromium's ``innerText`` of the body (what a browser shows; ``<details>`` opened),
when Chromium is installed (``--no-reference`` skips it).
"""

from __future__ import annotations

import argparse
import csv
import html
import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tickets.html import _TextWriter, contains_html, html_to_text  # noqa: E402
from worker.text import normalise_whitespace, strip_html, strip_quoted_replies  # noqa: E402

Convert = Callable[[str], str]

# --- candidates ------------------------------------------------------------------------------


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _lexbor_walk(markup: str, source_lines: bool) -> str:
    """Lexbor's tree into the product's writer: start tag, children, end tag, iteratively."""
    from selectolax.lexbor import LexborHTMLParser

    root = LexborHTMLParser(markup).body
    writer = _TextWriter(source_lines)
    if root is None:
        return ""
    stack: list[tuple[object, bool]] = [(root, True)]
    while stack:
        node, entering = stack.pop()
        tag = node.tag  # type: ignore[attr-defined]
        if tag == "-text":
            writer.handle_data(node.text_content or "")  # type: ignore[attr-defined]
        elif tag.startswith("-") or tag == "_comment":
            continue
        elif entering:
            if node is not root:
                writer.handle_starttag(tag)
            stack.append((node, False))
            children = list(node.iter(include_text=True))  # type: ignore[attr-defined]
            stack.extend((child, True) for child in reversed(children))
        elif node is not root:
            writer.handle_endtag(tag)
    return writer.text()


def candidates(before: Path | None) -> tuple[dict[str, tuple[Convert, Convert]], list[str]]:
    """name → (document converter, converter as the worker's html step), and what is missing."""
    found: dict[str, tuple[Convert, Convert]] = {
        "tickets/html.py": (html_to_text, strip_html),
    }
    missing: list[str] = []
    if before is not None:
        hand = _load("before_html", before / "producer/webhooks/html.py").html_to_text
        stdlib = _load("before_text", before / "worker/text.py").html_to_text
        found["before: hand-written"] = (hand, _gated(hand))
        found["before: html.parser"] = (stdlib, stdlib)  # its own tag check inside
    try:
        import html2text

        def h2t(markup: str) -> str:
            parser = html2text.HTML2Text()
            parser.body_width = 0  # no re-wrapping
            parser.ignore_links = parser.ignore_images = True  # no URLs added to the text
            return str(parser.handle(markup))

        found["html2text"] = (h2t, _gated(h2t))
    except ImportError:
        missing.append("html2text")
    try:
        import inscriptis

        found["inscriptis"] = (inscriptis.get_text, _gated(inscriptis.get_text))
    except ImportError:
        missing.append("inscriptis")
    try:
        from selectolax.lexbor import LexborHTMLParser

        def lexbor_text(markup: str) -> str:
            body = LexborHTMLParser(markup).body
            return body.text(separator="\n") if body is not None else ""

        found["selectolax .text()"] = (lexbor_text, _gated(lexbor_text))
        found["selectolax walk"] = (
            lambda m: _lexbor_walk(m, False),
            _gated(lambda m: _lexbor_walk(m, True)),
        )
    except ImportError:
        missing.append("selectolax")
    return found, missing


def _gated(convert: Convert) -> Convert:
    """As the worker's step: only a text holding HTML is converted (the product's check)."""
    return lambda text: convert(text) if contains_html(text) else text


# --- inputs ----------------------------------------------------------------------------------


def webhook_samples() -> list[str]:
    hooks = ROOT / "tests/fixtures/webhooks"
    freshdesk = json.loads((hooks / "freshdesk_ticket_created.json").read_text("utf-8"))
    zammad = json.loads((hooks / "zammad_ticket_created.json").read_text("utf-8"))
    return [freshdesk["freshdesk_webhook"]["ticket_description"], zammad["article"]["body"]]


def gitbugs(directory: Path) -> list[str]:
    csv.field_size_limit(sys.maxsize)
    bodies: list[str] = []
    for path in sorted(directory.glob("*/*_bugs.csv")):
        with path.open(encoding="utf-8", newline="") as fh:
            bodies += [row.get("Description") or "" for row in csv.DictReader(fh)]
    return [b for b in bodies if b.strip()]


def as_editor_html(text: str) -> str:
    """A plain description as a helpdesk's rich-text editor sends it: each line a <div>
    (an empty one holds a <br>), the text escaped, so "<p>" typed is "&lt;p&gt;"."""
    return "".join(
        f"<div>{html.escape(line, quote=False) or '<br>'}</div>" for line in text.splitlines()
    )


SHAPES: dict[str, Callable[[int], str]] = {
    '"<a" repeated (unclosed tags)': lambda n: "<a" * (n // 2),
    "unterminated comment": lambda n: "<p>x</p><!--" + "a" * (n - 12),
    "nested <div>": lambda n: "<div>" * (n // 5) + "x",
    "nested <blockquote>, then lines": lambda n: "<blockquote>" * (n // 24) + "x<br>" * (n // 10),
    "nested <b>": lambda n: "<b>" * (n // 3) + "x",
}

# Feature probes: (what, markup, check on the converter's output).
MAIL = (
    "<div>The printer on floor 3 is <b>jammed</b> again.</div><p>Second paragraph.</p>"
    "<ul><li>first</li><li>second</li></ul><style>p {color: red}</style>"
    "<div>On Mon, Ann wrote:</div><blockquote><p>Did you restart it?</p>"
    "<blockquote>older</blockquote></blockquote>"
)


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()]


PROBES: list[tuple[str, str, Callable[[str], bool]]] = [
    ("paragraph break (blank line)", "<p>one</p><p>two</p>", lambda t: "one\n\ntwo" in t),
    ("<br> line break", "a<br>b", lambda t: _lines(t)[:2] == ["a", "b"]),
    (
        "list items on their lines",
        "<ul><li>first</li><li>second</li></ul>",
        lambda t: sum(line.endswith(("first", "second")) for line in _lines(t)) == 2,
    ),
    (
        "blockquote lines start with >",
        MAIL,
        lambda t: any(line.startswith(">") and "restart" in line for line in _lines(t)),
    ),
    (
        "nested quote marked twice",
        MAIL,
        lambda t: any(
            line.replace(" ", "").startswith(">>") and "older" in line for line in _lines(t)
        ),
    ),
    (
        "quotes step drops the quoted reply",
        MAIL,
        lambda t: "restart" not in strip_quoted_replies(t) and "jammed" in t,
    ),
    (
        "script/style dropped",
        "x<script>alert(1)</script><style>p{}</style>y",
        lambda t: "alert" not in t and "{" not in t,
    ),
    ("entities: &lt;div&gt; → <div>", "<p>type &lt;div&gt; here</p>", lambda t: "<div>" in t),
    (
        "text inside 300 nested <div>s kept",
        "<div>" * 300 + "deep" + "</div>" * 300 + "<p>after</p>",
        lambda t: "deep" in t and "after" in t,
    ),
]
# Worker-step probes: Markdown with tags (source lines kept, placeholders kept).
STEP_PROBES: list[tuple[str, str, Callable[[str], bool]]] = [
    (
        "Markdown lines kept",
        "line one\nline two <b>bold</b>\n> quoted",
        lambda t: _lines(t)[:3] == ["line one", "line two bold", "> quoted"],
    ),
    ("<any jar> placeholder kept", "touch -t <any jar> <b>now</b>", lambda t: "any jar" in t),
    (
        "comment dropped",
        "<!-- @browser: x -->\n<p>shown</p>",
        lambda t: "browser" not in t and "shown" in t,
    ),
]


# --- reference -------------------------------------------------------------------------------

BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
PAGE = """<!doctype html><meta charset="utf-8"><body><script type="application/json" id="in">
DATA</script><script>
const bodies = JSON.parse(document.getElementById("in").textContent);
const box = document.createElement("div");
document.body.appendChild(box);
const texts = bodies.map((b) => {
  box.innerHTML = b;
  box.querySelectorAll("details").forEach((d) => { d.open = true; });
  return box.innerText;
});
const out = document.createElement("pre");
out.id = "out";
out.textContent = JSON.stringify(texts);
document.body.replaceChildren(out);
</script>"""


def browser_texts(bodies: list[str]) -> list[str] | None:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        return None
    data = json.dumps(bodies).replace("<", "\\u003c")
    with tempfile.TemporaryDirectory(prefix="bench-html-") as tmp:
        page = Path(tmp) / "page.html"
        page.write_text(PAGE.replace("DATA", data), encoding="utf-8")
        done = subprocess.run(
            [binary, *BROWSER_FLAGS, f"--user-data-dir={tmp}/profile", "--dump-dom", page.as_uri()],
            capture_output=True,
            text=True,
            timeout=300,
        )
    found = re.search(r'<pre id="out">(.*)</pre>', done.stdout, re.DOTALL)
    if found is None:
        print(f"# Chromium gave no text: {done.stderr[-500:]}", file=sys.stderr)
        return None
    texts: list[str] = json.loads(html.unescape(found.group(1)))
    return texts


def words(text: str) -> Counter[str]:
    return Counter(re.findall(r"\w+", text.lower()))


# --- measuring -------------------------------------------------------------------------------


def timed(convert: Convert, bodies: list[str]) -> float:
    start = time.perf_counter()
    for body in bodies:
        convert(body)
    return time.perf_counter() - start


def speed_rows(
    found: dict[str, tuple[Convert, Convert]], bodies: list[str], runs: int, step: bool
) -> dict[str, tuple[float, float]]:
    """name → (µs per body, ms per MB), medians of ``runs`` interleaved passes."""
    size_mb = sum(len(b.encode("utf-8")) for b in bodies) / 1e6
    seconds: dict[str, list[float]] = {name: [] for name in found}
    for _ in range(runs):
        for name, pair in found.items():
            seconds[name].append(timed(pair[1] if step else pair[0], bodies))
    return {
        name: (statistics.median(s) / len(bodies) * 1e6, statistics.median(s) / size_mb * 1e3)
        for name, s in seconds.items()
    }


def kept_rows(
    found: dict[str, tuple[Convert, Convert]], bodies: list[str], reference: list[str], step: bool
) -> dict[str, tuple[float, float, float]]:
    """name → (share of the reference's words kept, extra words / reference words, lines)."""
    ref = [words(t) for t in reference]
    total = sum(sum(c.values()) for c in ref)
    rows = {}
    for name, pair in found.items():
        convert = pair[1] if step else pair[0]
        outputs = [convert(b) for b in bodies]
        kept = extra = 0
        for out, r in zip(outputs, ref, strict=True):
            got = words(out)
            kept += sum((got & r).values())
            extra += sum((got - r).values())
        lines = sum(len([x for x in o.splitlines() if x.strip()]) for o in outputs)
        rows[name] = (kept / total, extra / total, lines / len(outputs))
    return rows


def adversarial(
    names: list[str], before: Path | None, sizes: list[int], limit: float
) -> dict[tuple[str, str], list[float | None]]:
    """(candidate, shape) → seconds per size (None: over the limit), each in its own process."""
    results: dict[tuple[str, str], list[float | None]] = {}
    for shape in SHAPES:
        for name in names:
            row: list[float | None] = []
            for size in sizes:
                if row and row[-1] is None:
                    row.append(None)  # a larger input of a shape that already timed out
                    continue
                args = [sys.executable, __file__, "--one", name, shape, str(size)]
                if before is not None:
                    args += ["--before", str(before)]
                try:
                    done = subprocess.run(
                        args, capture_output=True, text=True, timeout=limit + 30, check=True
                    )
                    row.append(float(done.stdout.strip().splitlines()[-1]))
                except subprocess.TimeoutExpired:
                    row.append(None)
            results[(name, shape)] = row
    return results


def one(name: str, shape: str, size: int, before: Path | None) -> None:
    """Child process: the best of up to 3 calls (fewer when a call takes over a second)."""
    if name == "tickets/html.py, worker step":
        convert = strip_html
    else:
        convert = candidates(before)[0][name][0]
    markup = SHAPES[shape](size)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        convert(markup)
        best = min(best, time.perf_counter() - start)
        if best > 1.0:
            break
    print(best)


def install_size(dist: str, *extra: str) -> str:
    total = 0
    for name in (dist, *extra):
        try:
            files = metadata.distribution(name).files or []
        except metadata.PackageNotFoundError:
            return "not installed"
        total += sum(f.locate().stat().st_size for f in files if Path(f.locate()).is_file())
    return f"{total / 1e6:.2f} MB"


def license_of(dist: str) -> str:
    try:
        meta = metadata.metadata(dist)
    except metadata.PackageNotFoundError:
        return "-"
    expression = meta.get("License-Expression")
    if expression:
        return str(expression)
    classifiers = [
        c.rsplit(" :: ", 1)[-1] for c in meta.get_all("Classifier") or [] if "License" in c
    ]
    return classifiers[0] if classifiers else str(meta.get("License") or "-")


# --- report ----------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gitbugs", type=Path, help="directory with */*_bugs.csv (GitBugs)")
    ap.add_argument("--before", type=Path, help="an older checkout holding the two converters")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--sizes", default="50000,100000,200000", help="adversarial input sizes")
    ap.add_argument("--limit", type=float, default=60.0, help="seconds per adversarial call")
    ap.add_argument("--no-reference", action="store_true", help="skip Chromium's innerText")
    ap.add_argument("--only", help="comma-separated candidate names to keep (default: all)")
    ap.add_argument("--one", nargs=3, metavar=("NAME", "SHAPE", "SIZE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        one(args.one[0], args.one[1], int(args.one[2]), args.before)
        return

    found, missing = candidates(args.before)
    if args.only:
        keep = args.only.split(",")
        found = {name: pair for name, pair in found.items() if name in keep}
    versions = ", ".join(
        f"{d} {metadata.version(d)}"
        for d in ("html2text", "inscriptis", "lxml", "selectolax")
        if d not in missing and not (d == "lxml" and "inscriptis" in missing)
    )
    print(f"# python {' '.join(sys.argv)}")
    print(
        f"# {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, load average {os.getloadavg()[0]:.1f}; {versions}"
    )
    if missing:
        print(f"# not installed, left out: {', '.join(missing)}")
    print()

    sets: list[tuple[str, list[str], bool]] = [("webhook samples", webhook_samples(), False)]
    if args.gitbugs:
        descriptions = gitbugs(args.gitbugs)
        marked = [d for d in descriptions if contains_html(d)]
        print(
            f"GitBugs: {len(marked)} of {len(descriptions)} descriptions hold HTML by the "
            "product's check"
        )
        if "before: html.parser" in found:
            before_step = found["before: html.parser"][1]
            changed = sum(
                normalise_whitespace(strip_html(d)) != normalise_whitespace(before_step(d))
                for d in descriptions
            )
            print(
                f"the worker's html step now gives another text (whitespace aside) for {changed} "
                f"of {len(descriptions)} descriptions"
            )
        sets.append(("GitBugs descriptions with HTML (as the worker's step)", marked, True))
        sets.append(
            (
                "all GitBugs descriptions as a helpdesk editor's HTML (a <div> per line, escaped)",
                [as_editor_html(d) for d in descriptions],
                False,
            )
        )
    print()

    for title, bodies, step in sets:
        if not bodies:
            print(f"== {title}: none\n")
            continue
        size = sum(len(b.encode("utf-8")) for b in bodies)
        print(f"== {title}: {len(bodies)} bodies, {size:,} bytes; median of {args.runs} runs")
        speed = speed_rows(found, bodies, args.runs, step)
        reference = None if args.no_reference else browser_texts(bodies)
        kept = kept_rows(found, bodies, reference, step) if reference is not None else {}
        header = ["candidate", "µs/body", "ms/MB"]
        if kept:
            header += ["words kept", "extra words", "lines/body"]
        rows = []
        for name, (per_body, per_mb) in speed.items():
            row = [name, f"{per_body:,.1f}", f"{per_mb:,.1f}"]
            if kept:
                share, extra, lines = kept[name]
                row += [f"{share:.1%}", f"{extra:.1%}", f"{lines:.1f}"]
            rows.append(row)
        if reference is not None:
            lines = sum(len([x for x in t.splitlines() if x.strip()]) for t in reference)
            rows.append(["(Chromium innerText)", "", "", "100%", "", f"{lines / len(bodies):.1f}"])
        _table(header, rows)

    print("== features (✓ kept / ✗ not); document probes on each converter, step probes on each")
    print("   converter as the worker's html step")
    header = ["probe", *found]
    rows = []
    for what, markup, check in PROBES:
        rows.append([what, *("✓" if check(pair[0](markup)) else "✗" for pair in found.values())])
    for what, markup, check in STEP_PROBES:
        rows.append([what, *("✓" if check(pair[1](markup)) else "✗" for pair in found.values())])
    _table(header, rows)

    sizes = [int(s) for s in args.sizes.split(",")]
    names = [*found, *(["tickets/html.py, worker step"] if "tickets/html.py" in found else [])]
    print(
        f"== adversarial inputs: seconds per call at {', '.join(f'{s:,}' for s in sizes)} "
        f"characters (best of up to 3; '>{args.limit:.0f}' = over the limit); growth = "
        f"time ratio of the largest to the smallest ({sizes[-1] // sizes[0]}x the input)"
    )
    results = adversarial(names, args.before, sizes, args.limit)
    rows = []
    for (name, shape), secs in results.items():
        cells = [f"{s:.4f}" if s is not None else f">{args.limit:.0f}" for s in secs]
        first, last = secs[0], secs[-1]
        growth = (
            f"{last / max(first, 1e-4):.1f}x" if first is not None and last is not None else "-"
        )
        rows.append([shape, name, *cells, growth])
    _table(["input", "candidate", *(f"{s:,}" for s in sizes), "growth"], rows)

    print("== install size (with the dependencies the product does not already have) and licence")
    own = (ROOT / "tickets/html.py").stat().st_size
    rows = [["tickets/html.py", f"{own / 1e6:.3f} MB", "(the product's)"]]
    for dist, extra in (("html2text", ()), ("inscriptis", ("lxml",)), ("selectolax", ())):
        rows.append([dist, install_size(dist, *extra), license_of(dist)])
    _table(["candidate", "installed", "licence"], rows)


if __name__ == "__main__":
    main()
