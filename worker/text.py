"""Text preparation: what of a ticket gets embedded.

Each preparation step is a small pure function ``str -> str`` over the ticket body,
registered in :data:`STEPS` under a name, so that ``triage evaluate retrieval --steps`` can
measure each one on labelled data (see ../docs/quality.md). :data:`DEFAULT_STEPS` and
:data:`DEFAULT_SUBJECT` are exactly the choices that measured better than leaving them out;
:func:`embedding_text` (what the pipeline embeds) uses them.

Steps see the body with its line structure (quoted replies, signatures and headings are
line-based) and run in the fixed order of :data:`STEPS` whatever order they are named in;
whitespace normalisation, when selected, runs last because it erases that structure.
Long tickets can be split with :func:`chunk_text` into pieces that each fit the model's
window; the caller embeds the pieces and mean-pools the vectors.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

from tickets.html import contains_html, html_to_text
from tickets.model import BodyFormat, Ticket

_SPACE = re.compile(r"\s+")


def normalise_whitespace(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _lines(text: str) -> list[str]:
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _has_words(lines: Iterable[str]) -> bool:
    return any(re.search(r"\w", line) for line in lines)


# --- HTML to text ----------------------------------------------------------------------------


def strip_html(text: str) -> str:
    """Visible text of a body that holds HTML tags; a body without any is left as it is.

    Source line breaks are kept (tickets/html.py, ``source_lines``): bodies mixing Markdown
    with tags (GitHub-style) rely on them, and whitespace normalisation joins soft wraps.
    ``<blockquote>`` lines get a "> " prefix per level, which hands quoted mail (HTML
    clients quote replies in <blockquote>) to the ``quotes`` step, so the two steps compose.
    """
    return html_to_text(text, source_lines=True) if contains_html(text) else text


# --- quoted replies --------------------------------------------------------------------------

_ATTRIBUTION = re.compile(r"^\s*(?:On\b.{0,200}\bwrote|\S.{0,80}\bwrote)\s*:\s*$", re.IGNORECASE)
_ATTRIBUTION_START = re.compile(r"^\s*On\s.{0,200}$", re.IGNORECASE)
_ORIGINAL_MESSAGE = re.compile(
    r"^\s*(?:-{2,}\s*(?:Original Message|Forwarded message)\s*-{2,}|_{10,})\s*$", re.IGNORECASE
)
_HEADER_FROM = re.compile(r"^\s*\*?From:\*?\s+\S", re.IGNORECASE)
_HEADER_NEXT = re.compile(r"^\s*\*?(?:Sent|Date|To|Subject|Cc):\*?\s", re.IGNORECASE)
_QUOTED = re.compile(r"^\s*>")


def _reply_header_at(lines: Sequence[str], i: int) -> bool:
    """An Outlook-style "From: … / Sent: …" header block starts at line i."""
    if not _HEADER_FROM.match(lines[i]):
        return False
    following = [line for line in lines[i + 1 : i + 5] if line.strip()]
    return bool(following) and _HEADER_NEXT.match(following[0]) is not None


def strip_quoted_replies(text: str) -> str:
    """Drop the earlier messages a reply quotes.

    - An "-----Original Message-----" line or a "From: … Sent: …" header block ends the
      new message: everything from there on is the old thread.
    - "On <date>, <name> wrote:" lines are dropped, and so are ">"-quoted lines when such
      an attribution exists or when they are the minority of the body (inline replies).
    - A body that is mostly quoted without any attribution (an issue moved from another
      tracker, quoted whole) is un-quoted instead: there the quote *is* the ticket.
    Nothing is cut if that would leave no words at all.
    """
    lines = _lines(text)
    for i in range(len(lines)):
        if (_ORIGINAL_MESSAGE.match(lines[i]) or _reply_header_at(lines, i)) and _has_words(
            lines[:i]
        ):
            lines = lines[:i]
            break
    kept: list[str] = []
    attributed = False
    i = 0
    while i < len(lines):
        line = lines[i]
        # Mail clients wrap a long attribution: "On Mon, 3 Jun 2024 at 10:00, Jane Doe\n<jane@x>
        # wrote:".
        if _ATTRIBUTION.match(line):
            attributed = True
            i += 1
            continue
        if (
            i + 1 < len(lines)
            and _ATTRIBUTION_START.match(line)
            and _ATTRIBUTION.match(line.strip() + " " + lines[i + 1].strip())
            and lines[i + 1].strip().lower().endswith("wrote:")
        ):
            attributed = True
            i += 2
            continue
        kept.append(line)
        i += 1
    quoted = [line for line in kept if _QUOTED.match(line) and re.search(r"\w", line)]
    own = [line for line in kept if not _QUOTED.match(line) and re.search(r"\w", line)]
    if quoted and (attributed or len(quoted) <= len(own)) and own:
        kept = [line for line in kept if not _QUOTED.match(line)]
    elif quoted:
        kept = [re.sub(r"^(\s*>)+ ?", "", line) for line in kept]
    return "\n".join(kept) if _has_words(kept) else text


# --- signatures ------------------------------------------------------------------------------

_SIG_DASHES = re.compile(r"^--\s?$")
_SENT_FROM = re.compile(
    r"^\s*(?:Sent from my\b.*|Sent from (?:Mail|Outlook|Yahoo Mail)\b.*|Get Outlook for\b.*"
    r"|Sent (?:from|via) (?:my )?(?:iPhone|iPad|Android|mobile|BlackBerry).*)$",
    re.IGNORECASE,
)
_VALEDICTION = re.compile(
    r"^\s*(?:(?:best|kind|warm|warmest|many)\s+(?:regards|wishes|thanks)|regards|best|cheers"
    r"|thanks|thank you|thanks again|thx|sincerely|yours(?: truly| sincerely)?|br)"
    r"\s*[,.!]*(?:\s+[\w.'-]+){0,3}\s*$",
    re.IGNORECASE,
)
# Lines after a valediction that still count as the sign-off (name, role, company, phone).
_MAX_SIGNOFF_LINES = 4
_MAX_SIGNOFF_WORDS = 6


def strip_signature(text: str) -> str:
    """Drop the sign-off: from a "-- " delimiter, a "Sent from my iPhone" line, or a closing
    "Thanks," / "Best regards," followed only by a few short lines (name, role, phone)."""
    lines = _lines(text)
    for i, line in enumerate(lines):
        if (_SIG_DASHES.match(line) or _SENT_FROM.match(line)) and _has_words(lines[:i]):
            lines = lines[:i]
            break
    content = [i for i, line in enumerate(lines) if line.strip()]
    # A valediction only counts near the end: "Thanks," mid-ticket is part of the text.
    for pos in range(max(0, len(content) - 1 - _MAX_SIGNOFF_LINES), len(content)):
        i = content[pos]
        tail = [lines[j] for j in content[pos + 1 :]]
        if (
            _VALEDICTION.match(lines[i])
            and all(len(t.split()) <= _MAX_SIGNOFF_WORDS for t in tail)
            and _has_words(lines[:i])
        ):
            lines = lines[:i]
            break
    return "\n".join(lines).rstrip()


# --- template boilerplate --------------------------------------------------------------------

# Headings that web forms and bug templates put into every ticket: they say nothing about
# the problem but make all tickets of one form look alike.
_HEADING_LIST = """
    steps to reproduce|steps to reproduce the problem|reproduction steps|how to reproduce
    actual results|actual result|actual behavior|actual behaviour|what happened
    expected results|expected result|expected behavior|expected behaviour
    what did you expect to happen|what did you expect
    please describe the problem|describe the problem|problem description|description
    environment|notes|additional information|additional context|additional details
    summary|details|workaround|impact|other information|more information
    """
_HEADINGS: Final = frozenset(h.strip() for h in re.split(r"[|\n]", _HEADING_LIST)) - {""}
_HEADING_MARKUP = re.compile(r"^[\s*#_>]*(.*?)[\s*_]*:?[\s*_]*$")
_ENVIRONMENT_LINE = re.compile(
    r"^[\s*_>]*(?:user[ -]?agent|build ?id|build identifier|buildnaam)[\s*_]*:.*$", re.IGNORECASE
)


def strip_template_boilerplate(text: str) -> str:
    """Drop form headings ("Steps to reproduce:", "Expected results:") and the browser's
    User-Agent / Build ID lines that bug forms stamp on every report."""
    kept = []
    for line in _lines(text):
        match = _HEADING_MARKUP.match(line)
        label = match.group(1).strip().lower() if match else ""
        if label in _HEADINGS or _ENVIRONMENT_LINE.match(line):
            continue
        kept.append(line)
    return "\n".join(kept) if _has_words(kept) else text


# --- markup, URLs, stack traces --------------------------------------------------------------

_JIRA_MACRO = re.compile(r"\{(?:code|noformat|quote|panel|color|quote)(?::[^}]*)?\}", re.IGNORECASE)
_MD_LINK = re.compile(r"\[([^\]|]+)\]\((?:[^)]+)\)")
_JIRA_LINK = re.compile(r"\[([^\]|]+)\|[^\]]+\]")
_EMPHASIS = re.compile(r"(\*\*|__|```|`)")
_JIRA_HEADING = re.compile(r"^\s*h[1-6]\.\s+", re.MULTILINE)


def strip_markup(text: str) -> str:
    """Remove Jira / Markdown formatting ({code}, {noformat}, ``` fences, **bold**, link
    syntax, h1. headings) and keep the words it wraps."""
    text = _JIRA_MACRO.sub("", text)
    text = _MD_LINK.sub(r"\1", text)
    text = _JIRA_LINK.sub(r"\1", text)
    text = _JIRA_HEADING.sub("", text)
    return _EMPHASIS.sub("", text)


_URL = re.compile(r"\bhttps?://[^\s<>\"')\]]+", re.IGNORECASE)


def strip_urls(text: str) -> str:
    """Drop URLs: a long link costs dozens of word-piece tokens of the 256 the model reads.
    A body that is nothing but a link keeps it (better than embedding nothing)."""
    stripped = _URL.sub("", text)
    return stripped if re.search(r"\w", stripped) else text


_FRAME = re.compile(r"^\s*at\s+[\w$.<>/-]+\(.*\)\s*$")
_MORE = re.compile(r"^\s*\.\.\.\s*\d+\s+more\s*$")
_KEPT_FRAMES = 3


def shorten_stack_traces(text: str) -> str:
    """Keep the first three frames of each Java stack trace: the exception line and the top
    frames identify the failure; the rest fill the model's window with framework frames."""
    kept: list[str] = []
    run = 0
    for line in _lines(text):
        if _FRAME.match(line):
            run += 1
            if run <= _KEPT_FRAMES:
                kept.append(line)
            continue
        run = 0
        if not _MORE.match(line):
            kept.append(line)
    return "\n".join(kept)


# --- step registry ---------------------------------------------------------------------------

Step = Callable[[str], str]

# The order here is the order of application (HTML first so that the other steps see
# lines; quotes before signatures, since a quoted thread carries other people's signatures).
STEPS: Final[dict[str, Step]] = {
    "html": strip_html,
    "quotes": strip_quoted_replies,
    "signature": strip_signature,
    "boilerplate": strip_template_boilerplate,
    "markup": strip_markup,
    "urls": strip_urls,
    "stacktrace": shorten_stack_traces,
    "whitespace": normalise_whitespace,
}

# How the subject joins the body:
# - once: "subject. body";
# - twice: the subject repeated, so it weighs more in the mean-pooled vector;
# - twice-long: repeated only when the body is long, where it would otherwise be diluted;
# - only-long: the subject alone when the body is long (the body of a long report is
#   mostly logs the model cannot summarise in 256 tokens);
# - none: the body only.
SUBJECT_MODES: Final = ("once", "twice", "twice-long", "only-long", "none")
# "Long": more words than the model's 256-token window holds (≈ 1.3 tokens per word).
LONG_BODY_WORDS = 200

# Measured on GitBugs Hadoop + SeaMonkey (docs/quality.md, "Text preparation"): HTML to text and
# URL removal each raised Recall@10 + MRR on both sets; the other steps were neutral (no mail
# quoting or signatures in bug trackers), mixed (markup, boilerplate: better on SeaMonkey,
# worse on Hadoop) or worse (stack traces, repeating the subject, chunking). They stay
# available for `triage evaluate retrieval --steps` on a helpdesk's own labelled data.
DEFAULT_STEPS: Final[tuple[str, ...]] = ("html", "urls", "whitespace")
DEFAULT_SUBJECT: Final = "once"


def resolve_steps(names: Iterable[str]) -> tuple[str, ...]:
    """Validate step names and put them in application order."""
    wanted = set(names)
    unknown = wanted - set(STEPS)
    if unknown:
        raise ValueError(
            f"unknown text step(s): {', '.join(sorted(unknown))}; known: {', '.join(STEPS)}"
        )
    return tuple(name for name in STEPS if name in wanted)


def prepare_body(
    body: str, steps: Iterable[str] = DEFAULT_STEPS, body_format: BodyFormat = "html"
) -> str:
    for name in resolve_steps(steps):
        # A body intake already made plain text is never converted again: a "<div>" in it
        # is what the customer wrote (tickets/model.py, BodyFormat).
        if name == "html" and body_format == "text":
            continue
        body = STEPS[name](body)
    return body


def join_subject(subject: str, body: str, mode: str = DEFAULT_SUBJECT) -> str:
    """Combine an (already prepared) subject and body as ``mode`` says (see SUBJECT_MODES)."""
    if mode not in SUBJECT_MODES:
        raise ValueError(f"unknown subject mode {mode!r}; known: {', '.join(SUBJECT_MODES)}")
    subject = subject.strip()
    body = body.strip()
    if not subject or mode == "none":
        return body or subject
    if not body:
        return subject
    long = len(body.split()) > LONG_BODY_WORDS
    if mode == "only-long" and long:
        return subject
    repeat = mode == "twice" or (mode == "twice-long" and long)
    # Some helpdesks start the body with the subject: that already counts as one copy.
    copies = (2 if repeat else 1) - body.startswith(subject)
    return ". ".join([subject] * copies + [body])


def prepare_text(
    subject: str | None,
    body: str,
    steps: Iterable[str] = DEFAULT_STEPS,
    subject_mode: str = DEFAULT_SUBJECT,
    body_format: BodyFormat = "html",
) -> str:
    """The text to embed for a subject and body, prepared by ``steps``."""
    steps = resolve_steps(steps)
    prepared_subject = normalise_whitespace(subject or "")
    return join_subject(prepared_subject, prepare_body(body, steps, body_format), subject_mode)


def embedding_text(ticket: Ticket) -> str:
    """What the pipeline embeds for ``ticket``: the default preparation."""
    return prepare_text(ticket.subject, ticket.body, body_format=ticket.body_format)


# --- chunking --------------------------------------------------------------------------------

TokenCounter = Callable[[Sequence[str]], Sequence[int]]
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+(?=\S)")


def chunk_text(text: str, count_tokens: TokenCounter, max_tokens: int = 256) -> list[str]:
    """Split ``text`` into pieces of fewer than ``max_tokens`` tokens each, on paragraph
    boundaries (blank lines) where possible, else on sentence ends, else between words.

    ``count_tokens`` counts tokens as the model sees them (special tokens included), e.g.
    ``LocalEmbedder.token_counts``. A counter that truncates reports ``max_tokens`` for
    anything longer, so a piece is taken to fit only when its count is *below* ``max_tokens``.
    Each piece has its whitespace normalised; the text's words all appear, in order.
    """
    if max_tokens < 8:
        raise ValueError(f"max_tokens must be at least 8, got {max_tokens}")

    def fits(pieces: Sequence[str]) -> list[bool]:
        return [n < max_tokens for n in count_tokens(pieces)] if pieces else []

    whole = normalise_whitespace(text)
    if not whole:
        return []
    if fits([whole])[0]:
        return [whole]
    paragraphs = [normalise_whitespace(p) for p in re.split(r"\n\s*\n", text.replace("\r\n", "\n"))]
    units: list[str] = []
    for paragraph, ok in zip(paragraphs, fits(paragraphs), strict=True):
        if not paragraph:
            continue
        if ok:
            units.append(paragraph)
            continue
        sentences = [s for s in _SENTENCE_END.split(paragraph) if s]
        for sentence, sentence_ok in zip(sentences, fits(sentences), strict=True):
            units.extend([sentence] if sentence_ok else _split_words(sentence, fits))
    return _pack(units, fits)


def _split_words(sentence: str, fits: Callable[[Sequence[str]], list[bool]]) -> list[str]:
    """Cut an over-long sentence (a log line, a URL list) between words, greedily."""
    words = sentence.split()
    pieces: list[str] = []
    start = 0
    while start < len(words):
        # Largest end with words[start:end] fitting: binary search, one counter call a step.
        lo, hi = start + 1, len(words)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits([" ".join(words[start:mid])])[0]:
                lo = mid
            else:
                hi = mid - 1
        # A single word longer than the window is kept whole (the model truncates it);
        # it cannot be split on a word boundary.
        pieces.append(" ".join(words[start:lo]))
        start = lo
    return pieces


def _pack(units: list[str], fits: Callable[[Sequence[str]], list[bool]]) -> list[str]:
    """Join consecutive units greedily while the joined piece still fits."""
    chunks: list[str] = []
    current = ""
    for unit in units:
        candidate = f"{current} {unit}" if current else unit
        if current and not fits([candidate])[0]:
            chunks.append(current)
            current = unit
        else:
            current = candidate
    if current:
        chunks.append(current)
    return chunks


def prepare_chunks(
    subject: str | None,
    body: str,
    count_tokens: TokenCounter,
    *,
    steps: Iterable[str] = DEFAULT_STEPS,
    subject_mode: str = DEFAULT_SUBJECT,
    max_tokens: int = 256,
    subject_each: bool = False,
) -> list[str]:
    """The pieces to embed and mean-pool for a long ticket.

    Whitespace normalisation is applied per piece (it would erase the paragraph boundaries
    the split needs). With ``subject_each`` every piece starts with the subject, so that a
    piece of log lines still says what it is about.
    """
    structural = [name for name in resolve_steps(steps) if name != "whitespace"]
    prepared_body = prepare_body(body, structural)
    prepared_subject = normalise_whitespace(subject or "")
    if not subject_each or not prepared_subject:
        return chunk_text(
            join_subject(prepared_subject, prepared_body, subject_mode), count_tokens, max_tokens
        )
    # Leave room for the subject in each piece.
    reserve = count_tokens([prepared_subject + "."])[0]
    room = max(16, max_tokens - reserve)
    pieces = chunk_text(prepared_body, count_tokens, room) or [""]
    return [join_subject(prepared_subject, piece, subject_mode) for piece in pieces]


# --- the subject as its own vector ----------------------------------------------------------

# Measured by `triage evaluate` (docs/quality.md): pooling the subject's own vector with weight
# 0.2 into the text's raised Recall@10 on GitBugs Hadoop from 0.783 to 0.814 (SeaMonkey
# unchanged at 0.853); 0.3 and 0.4 were no better. Repeating the subject inside the text
# was worse.
DEFAULT_SUBJECT_WEIGHT = 0.2


def embed_tickets(
    embed: Callable[[Sequence[str]], npt.NDArray[np.float32]],
    texts: Sequence[str],
    subjects: Sequence[str | None],
    subject_weight: float,
) -> npt.NDArray[np.float32]:
    """One vector per ticket from ONE embedding call: the prepared text's vector, pooled
    with the subject's own vector (``normalise(w·subject + (1-w)·text)``) when there is one."""
    pooled = [
        k
        for k, subject in enumerate(subjects)
        if subject_weight > 0 and subject and subject.strip()
    ]
    vectors = np.asarray(
        embed([*texts, *(normalise_whitespace(subjects[k] or "") for k in pooled)]),
        dtype=np.float32,
    )
    out = vectors[: len(texts)].copy()
    if pooled:
        mixed = subject_weight * vectors[len(texts) :] + (1 - subject_weight) * out[pooled]
        out[pooled] = mixed / np.linalg.norm(mixed, axis=1, keepdims=True)
    return out
