"""HTML → plain text for ticket bodies, with a small tokenizer linear in its input.

Used for Freshdesk ``ticket_description``, Zammad ``text/html`` articles and Help Scout
thread bodies. Markdown (GitHub) and Jira wiki markup are already text and never go
through here.

What it does: drops ``script``/``style``/``template``/``title`` content, turns ``<br>``
and block-level tags into line breaks, unescapes entities (``&amp;`` → ``&``,
``&nbsp;`` → a space), collapses source whitespace the way a browser would (except in
``<pre>``), and leaves at most one blank line between paragraphs. Images, and markup
that carries no text, vanish.

It never raises, and its time is linear in the input whatever the input holds. The
stdlib ``html.parser`` is not: it rescans the rest of the input for every ``<a`` that never
closes (120 KB of ``<a`` took 9.7 s) and for every unterminated ``<!--``. Here each token
is matched by a pattern that cannot run past the next ``<``, so a broken tag costs the text
up to the next ``<`` once, and is then read as text; an unterminated comment or ``<script>``
runs to the end, as in a browser.
"""

from __future__ import annotations

import html
import re

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


class _TextExtractor:
    def __init__(self) -> None:
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

    # -- token callbacks (named as html.parser names them) -------------------------------
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
            if tag is None:
                declaration = _DECLARATION.match(markup, lt)
                if declaration is not None:
                    pos = declaration.end()
                else:
                    text.append("<")  # a "<" that opens no tag is text ("a < b")
                    pos = lt + 1
                continue
            flush()
            name = tag.group(2).lower()
            pos = tag.end()
            if tag.group(1):
                self.handle_endtag(name)
                continue
            self.handle_starttag(name, [])
            if name in _RAW_TEXT_END:
                close_tag = _RAW_TEXT_END[name].search(markup, pos)
                if close_tag is None:
                    return  # an unterminated <script> swallows the rest
                self.handle_endtag(name)
                pos = close_tag.end()
            elif markup[pos - 2] == "/":  # <br/>, <p/>: a start and an end
                self.handle_endtag(name)
        flush()


def html_to_text(markup: str) -> str:
    """Readable plain text from an HTML fragment or document."""
    if not markup:
        return ""
    parser = _TextExtractor()
    parser.feed(markup)
    text = parser.text().replace("\xa0", " ")
    text = _TRAILING_WS.sub("\n", text)
    text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip()
