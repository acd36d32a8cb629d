"""HTML → plain text for ticket bodies, with nothing but the stdlib ``html.parser``.

Used for Freshdesk ``ticket_description``, Zammad ``text/html`` articles and Help Scout
thread bodies. Markdown (GitHub) and Jira wiki markup are already text and never go
through here.

What it does: drops ``script``/``style``/``template``/``title`` content, turns ``<br>``
and block-level tags into line breaks, unescapes entities (``&amp;`` → ``&``,
``&nbsp;`` → a space), collapses source whitespace the way a browser would (except in
``<pre>``), and leaves at most one blank line between paragraphs. Images, and markup
that carries no text, vanish.

It never raises: ``html.parser`` can throw ``AssertionError`` on some malformed
declarations (``<![foo[``); such input falls back to a crude tag strip.
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

__all__ = ["html_to_text"]

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
_WS = re.compile(r"[ \t\n\r\f\v\xa0\u200b]+")
_TRAILING_WS = re.compile(r"[ \t]+\n")
_MANY_NEWLINES = re.compile(r"\n{3,}")


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._out: list[str] = []
        self._skip = 0
        self._pre = 0
        self._at_line_start = True

    # -- output helpers ----------------------------------------------------------------
    def _tail(self) -> str:
        return self._out[-1][-1:] if self._out else ""

    def _trim_spaces(self) -> None:
        while self._out:
            stripped = self._out[-1].rstrip(" \t")
            if stripped:
                self._out[-1] = stripped
                return
            self._out.pop()

    def _trailing_newlines(self) -> int:
        count = 0
        for piece in reversed(self._out):
            rest = piece.rstrip("\n")
            count += len(piece) - len(rest)
            if rest or count >= 2:
                break
        return count

    def _newline(self, count: int = 1) -> None:
        """End the current line, leaving ``count`` (1 or 2) line breaks; a no-op at the start."""
        self._trim_spaces()
        self._at_line_start = True
        if self._out:
            missing = count - self._trailing_newlines()
            if missing > 0:
                self._out.append("\n" * missing)

    def _break(self) -> None:
        """A ``<br>``: one more line break, at most one blank line in a row."""
        self._trim_spaces()
        self._at_line_start = True
        if self._out and self._trailing_newlines() < 2:
            self._out.append("\n")

    def _write(self, text: str) -> None:
        if not text:
            return
        if self._pre:
            text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\xa0", " ")
        else:
            text = _WS.sub(" ", text)
            if self._at_line_start or self._tail() == " ":
                text = text.lstrip(" ")
            if not text:
                return
        self._out.append(text)
        self._at_line_start = text.endswith("\n")

    # -- HTMLParser callbacks ----------------------------------------------------------
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self._skip += 1
            return
        if self._skip:
            return
        if tag == "br":
            self._break()
        elif tag in _BLOCK:
            self._newline(2 if tag in _PARAGRAPH else 1)
            if tag == "pre":
                self._pre += 1
            elif tag == "li":
                self._write("- ")
        elif tag in _CELL and not self._at_line_start:
            self._write(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self._skip = max(0, self._skip - 1)
            return
        if self._skip:
            return
        if tag in _BLOCK:
            if tag == "pre":
                self._pre = max(0, self._pre - 1)
            self._newline(2 if tag in _PARAGRAPH else 1)
        elif tag in _CELL:
            self._write(" ")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self._write(data)

    def text(self) -> str:
        return "".join(self._out)


def _crude(markup: str) -> str:
    text = re.sub(r"<[^>]*>", " ", markup)
    return _WS.sub(" ", html.unescape(text)).strip()


def html_to_text(markup: str) -> str:
    """Readable plain text from an HTML fragment or document."""
    if not markup:
        return ""
    parser = _TextExtractor()
    try:
        parser.feed(markup)
        parser.close()
    except Exception:
        # html.parser raises AssertionError (and, in some versions, other errors) on a few
        # malformed declarations; a body must still come out as text, never as a 500.
        return _crude(markup)
    text = parser.text().replace("\xa0", " ")
    text = _TRAILING_WS.sub("\n", text)
    text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip()
