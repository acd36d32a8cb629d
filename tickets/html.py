"""HTML → plain text for ticket bodies, with a small tokenizer linear in its input.

One converter for intake and text preparation, in two layouts:

- ``html_to_text(markup)``: an HTML document or fragment, such as a helpdesk's rich-text
  body (Freshdesk descriptions, Zammad ``text/html`` articles, Help Scout threads). Source
  whitespace collapses as a browser collapses it (except in ``<pre>``).
- ``html_to_text(text, source_lines=True)``: text that mixes plain lines with tags (Markdown
  with inline HTML, as GitHub issues and imported files have). Its line breaks are kept, and
  only names of HTML elements are read as tags: ``<any jar>`` or ``<f1>`` in a bug report
  stays text. :func:`contains_html` says whether such a text holds HTML at all.

Both drop ``script``/``style``/``template``/``title`` content and comments, turn ``<br>`` and
block-level tags into line breaks (a blank line around paragraphs, lists, tables, headings
and quotes), start list items with ``- ``, unescape entities (``&amp;`` → ``&``, ``&nbsp;`` → a
space) and leave at most one blank line in a row. Lines inside ``<blockquote>`` start with
``> `` per level, so that quoted mail reads as quoted text does and the ``quotes`` step of text
preparation can drop it.

It never raises, and its time is linear in the input whatever the input holds. The stdlib
``html.parser`` is not: it rescans the rest of the input for every ``<a`` that never closes
(120 KB of ``<a`` took 9.7 s), and HTML5 tree builders (lexbor, behind selectolax) check the
stack of open elements on every tag, quadratic in the nesting depth (``bench/html_to_text.py``,
docs/performance.md). Here each token is matched by a pattern that cannot run past the next
``<``, so a broken tag costs the text up to the next ``<`` once, and is then read as text; an
unterminated comment or ``<script>`` runs to the end, as in a browser. No stack is kept, and
the ``> `` prefix stops growing at :data:`MAX_QUOTE_PREFIX` levels, so that deeply nested
quotes cannot multiply the output.
"""

from __future__ import annotations

import html
import re

__all__ = ["MAX_QUOTE_PREFIX", "contains_html", "html_to_text"]

# Content of these elements is not text a reader sees.
_SKIP = frozenset({"script", "style", "template", "title"})
# Elements that start on a new line in a browser.
_BLOCK = frozenset(
    {
        "address",
        "article",
        "aside",
        "blockquote",
        "center",
        "dd",
        "details",
        "dialog",
        "div",
        "dl",
        "dt",
        "fieldset",
        "figcaption",
        "figure",
        "footer",
        "form",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "header",
        "hr",
        "li",
        "main",
        "nav",
        "ol",
        "p",
        "pre",
        "section",
        "summary",
        "table",
        "tbody",
        "tfoot",
        "thead",
        "tr",
        "ul",
    }
)
# Blocks that a browser separates from their neighbours by a blank line.
_PARAGRAPH = frozenset(
    {"p", "pre", "blockquote", "table", "ul", "ol", "dl", "h1", "h2", "h3", "h4", "h5", "h6"}
)
_CELL = frozenset({"td", "th"})
# Every other element of the HTML Living Standard (and a few obsolete ones mail still uses):
# in a text of plain lines, only these names are tags.
_INLINE = frozenset(
    {
        "a",
        "abbr",
        "area",
        "audio",
        "b",
        "base",
        "bdi",
        "bdo",
        "big",
        "body",
        "br",
        "button",
        "canvas",
        "caption",
        "cite",
        "code",
        "col",
        "colgroup",
        "data",
        "datalist",
        "del",
        "dfn",
        "em",
        "embed",
        "font",
        "head",
        "html",
        "i",
        "iframe",
        "img",
        "input",
        "ins",
        "kbd",
        "label",
        "legend",
        "link",
        "map",
        "mark",
        "meta",
        "meter",
        "noscript",
        "object",
        "optgroup",
        "option",
        "output",
        "picture",
        "progress",
        "q",
        "rp",
        "rt",
        "ruby",
        "s",
        "samp",
        "select",
        "slot",
        "small",
        "source",
        "span",
        "strike",
        "strong",
        "sub",
        "sup",
        "svg",
        "textarea",
        "time",
        "track",
        "tt",
        "u",
        "var",
        "video",
        "wbr",
    }
)
_ELEMENTS = _SKIP | _BLOCK | _CELL | _INLINE
# The tags whose presence makes a text of plain lines HTML: the common ones of mail and web
# forms. A bug report that only mentions <html> or <input> in passing stays as it is.
_TELLING = frozenset(
    {
        *("p", "div", "br", "span", "a", "b", "i", "u", "em", "strong", "font", "hr", "img"),
        *("ul", "ol", "li", "table", "tbody", "thead", "tr", "td", "th", "pre", "code"),
        *("h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "details", "summary"),
        *("html", "body", "head", "style", "script"),
    }
)

# Quote levels beyond this still count, but add no more "> ": a line quoted eight times is
# as quoted as one quoted eighty times, and the prefix must not multiply the output.
MAX_QUOTE_PREFIX = 8

# A run of white space that is not already one plain space (those are most runs, and
# replacing each by itself would cost a substitution apiece).
_WS = re.compile(r"[\t\n\r\f\v\xa0\u200b][ \t\n\r\f\v\xa0\u200b]*| [ \t\n\r\f\v\xa0\u200b]+")
_LINE_WS = re.compile(r"[\t\f\v\xa0\u200b][ \t\f\v\xa0\u200b]*| [ \t\f\v\xa0\u200b]+")
_NEWLINE = re.compile(r"\r\n?|\n")
_MANY_NEWLINES = re.compile(r"\n{3,}")

# A start or end tag: name, then attributes (quoted values may hold ">"), then ">". No part
# can match "<", and possessive quantifiers never backtrack: one try costs at most the text
# up to the next "<".
_TAG = re.compile(r"""<(/?)([a-zA-Z][^\s/<>]*+)(?:[^<>"']++|"[^"<]*+"|'[^'<]*+')*+>""")
# <!DOCTYPE ...>, <?xml ...?>, <![CDATA[...]]>: no text a reader sees.
_DECLARATION = re.compile(r"<[!?][^<>]*+>")
# Elements whose content is raw text, not markup (as html.parser and browsers read them).
_RAW_TEXT_END = {
    "script": re.compile(r"</script\s*>", re.IGNORECASE),
    "style": re.compile(r"</style\s*>", re.IGNORECASE),
}


def contains_html(text: str) -> bool:
    """Whether ``text`` holds a tag of the common HTML elements (linear in ``text``).

    Bug reports and plain-text mail are full of ``<any jar>``-like placeholders and XML
    snippets: only a ``<p>``, ``<div>``, ``<br>``, ``<a>``… makes a text HTML.
    """
    return any(m.group(2).lower() in _TELLING for m in _TAG.finditer(text))


class _TextWriter:
    """Lines of output: block tags end lines, text fills the current one."""

    def __init__(self, source_lines: bool) -> None:
        self.lines: list[str] = []
        self._line: list[str] = []
        self._prefix = ""
        self._source_lines = source_lines
        self._skip = 0
        self._pre = 0
        self._quote = 0

    # -- lines ---------------------------------------------------------------------------
    def _end_line(self) -> None:
        """Finish the current line; an empty one adds nothing."""
        if self._line:
            text = "".join(self._line).rstrip(" \t")
            self.lines.append(self._prefix + text if text else "")
            self._line = []

    def _blank_line(self) -> None:
        """End the current line and leave one blank line after it; a no-op at the start."""
        self._end_line()
        if self.lines and self.lines[-1]:
            self.lines.append("")

    def _line_break(self) -> None:
        """A ``<br>`` or a kept source line break: an empty line becomes a blank line."""
        if self._line:
            self._end_line()
        elif self.lines or self._source_lines:
            self.lines.append("")

    def _inline(self, text: str) -> None:
        # Outside <pre>, spaces at the start of a line or after a space are not shown.
        if not self._pre and (not self._line or self._line[-1].endswith(" ")):
            text = text.lstrip(" ")
        if not text:
            return
        if not self._line:
            self._prefix = "> " * min(self._quote, MAX_QUOTE_PREFIX)
        self._line.append(text)

    def _write(self, text: str) -> None:
        if not (self._pre or self._source_lines):
            self._inline(_WS.sub(" ", text))
            return
        text = text.replace("\xa0", " ") if self._pre else _LINE_WS.sub(" ", text)
        first, *middle_and_last = _NEWLINE.split(text)
        self._inline(first)
        if not middle_and_last:
            return
        self._line_break()
        # Lines between two source line breaks are whole: written out directly (a text of
        # many lines costs one call per line, not three).
        prefix = "> " * min(self._quote, MAX_QUOTE_PREFIX)
        for line in middle_and_last[:-1]:
            line = line.rstrip(" \t") if self._pre else line.strip(" ")
            self.lines.append(prefix + line if line else "")
        self._inline(middle_and_last[-1])

    def _block(self, tag: str) -> None:
        """A block starts or ends: a blank line around paragraphs, a line break otherwise."""
        if tag in _PARAGRAPH:
            self._blank_line()
        else:
            self._end_line()

    # -- token callbacks (named as html.parser names them) -------------------------------
    def handle_starttag(self, tag: str) -> None:
        if tag in _SKIP:
            self._skip += 1
        elif self._skip:
            return
        elif tag == "br":
            self._line_break()
        elif tag in _BLOCK:
            self._block(tag)
            if tag == "pre":
                self._pre += 1
            elif tag == "blockquote":
                self._quote += 1
            elif tag == "li":
                self._inline("- ")
        elif tag in _CELL and self._line:
            self._inline(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self._skip = max(0, self._skip - 1)
        elif self._skip:
            return
        elif tag in _BLOCK:
            self._block(tag)
            if tag == "pre":
                self._pre = max(0, self._pre - 1)
            elif tag == "blockquote":
                self._quote = max(0, self._quote - 1)
        elif tag in _CELL:
            self._inline(" ")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self._write(data)

    def text(self) -> str:
        self._end_line()
        text = "\n".join(self.lines).replace("\xa0", " ")
        return _MANY_NEWLINES.sub("\n\n", text).strip()

    def feed(self, markup: str) -> None:
        """Tokenize ``markup`` into the callbacks above, in one pass."""
        pos, end = 0, len(markup)
        text: list[str] = []  # text since the last tag, handed over in one piece

        def flush() -> None:
            if text:
                self.handle_data(html.unescape("".join(text)))
                text.clear()

        while pos < end:
            lt = markup.find("<", pos)
            if lt < 0:
                text.append(markup[pos:])
                break
            text.append(markup[pos:lt])
            if markup.startswith("<!--", lt):
                close = markup.find("-->", lt + 4)
                if close < 0:
                    break  # an unterminated comment runs to the end
                pos = close + 3
                continue
            tag = _TAG.match(markup, lt)
            name = tag.group(2).lower() if tag is not None else ""
            if tag is None or (self._source_lines and name not in _ELEMENTS):
                declaration = _DECLARATION.match(markup, lt)
                if declaration is not None:
                    pos = declaration.end()
                else:
                    text.append("<")  # a "<" that opens no tag is text ("a < b")
                    pos = lt + 1
                continue
            flush()
            pos = tag.end()
            if tag.group(1):
                self.handle_endtag(name)
                continue
            self.handle_starttag(name)
            if name in _RAW_TEXT_END:
                close_tag = _RAW_TEXT_END[name].search(markup, pos)
                if close_tag is None:
                    return  # an unterminated <script> swallows the rest
                self.handle_endtag(name)
                pos = close_tag.end()
            elif markup[pos - 2] == "/":  # <br/>, <p/>: a start and an end
                self.handle_endtag(name)
        flush()


def html_to_text(markup: str, *, source_lines: bool = False) -> str:
    """Readable plain text from HTML (see the module docstring for the two layouts)."""
    if not markup:
        return ""
    writer = _TextWriter(source_lines)
    writer.feed(markup)
    return writer.text()
