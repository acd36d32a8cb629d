"""The canonical ticket: what every producer builds and every queue message carries.

``(source, ticket_id)`` is the key everywhere: SQL rows, Chroma ids, failure rows.
A message is ``Ticket.to_message()``: JSON primitives only (ISO 8601 strings for times),
never ORM objects or arrays, so any producer in any language can enqueue one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tickets.errors import InvalidTicket

# Bodies beyond this are kept whole in SQL but are far past what the model reads (256
# tokens); the cap only stops a runaway payload from filling the queue and the database.
MAX_BODY_CHARS = 200_000
MAX_SUBJECT_CHARS = 2_000

# What a body is, so that it is converted to text once (tickets/html.py):
# - "text": plain text already: intake converted the helpdesk's HTML, or the helpdesk sends
#   plain text. Nothing in it is read as a tag again: "&lt;div&gt;" that a customer typed
#   became "<div>" at intake and stays so.
# - "html": it may hold HTML tags among plain lines (Markdown, imported files, the ingest
#   API, producers that do not say): text preparation converts the tags it finds.
BodyFormat = Literal["html", "text"]

# A ticket's life in the product's own words; each webhook adapter maps its helpdesk's
# vocabulary onto these (docs/helpdesks/). TRIAGE_MATCH_STATUSES chooses which of them may be
# offered as matches.
Status = Literal["open", "pending", "solved", "closed", "deleted"]
STATUSES: tuple[Status, ...] = ("open", "pending", "solved", "closed", "deleted")


class TicketKey(NamedTuple):
    source: str
    ticket_id: str

    def as_id(self) -> str:
        """The Chroma id: sources never contain ':' (see Ticket.source), so this splits back."""
        return f"{self.source}:{self.ticket_id}"

    @classmethod
    def from_id(cls, value: str) -> TicketKey:
        source, _, ticket_id = value.partition(":")
        return cls(source, ticket_id)

    def __str__(self) -> str:
        return self.as_id()


class _Message(BaseModel):
    """What every queue message about one ticket has: its key, JSON primitives only."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    source: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    ticket_id: str = Field(min_length=1, max_length=255)

    @property
    def key(self) -> TicketKey:
        return TicketKey(self.source, self.ticket_id)

    def to_message(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_message(cls, message: object) -> Self:
        """Validate a queue message; raise InvalidTicket naming the bad field."""
        if not isinstance(message, dict):
            raise InvalidTicket(f"message is not a JSON object: {type(message).__name__}")
        try:
            return cls.model_validate(message)
        except ValidationError as exc:
            raise InvalidTicket(describe_validation_error(exc)) from None


class Ticket(_Message):
    subject: str | None = None
    body: str = ""
    body_format: BodyFormat = "html"
    created_at: datetime | None = None
    queue: str | None = Field(None, max_length=100)
    tags: tuple[str, ...] = ()
    # When the producer accepted it: the start of the end-to-end latency.
    received_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @field_validator("created_at", "received_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        return _as_utc(value)

    @field_validator("source", "ticket_id", "subject", "body", "queue", mode="before")
    @classmethod
    def _clean_text(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str):
            return value
        if info.field_name in ("source", "ticket_id"):
            # An id is refused, never cleaned: "nu\0l-X" cleaned would collide with "nul-X",
            # and a tab or line break would be trimmed into another ticket's id the same way.
            bad = next((c for c in value if c < " " or "\x7f" <= c <= "\x9f"), None)
            if bad is not None:
                raise ValueError(
                    f"contains the control character U+{ord(bad):04X} at position "
                    f"{value.index(bad)}: ids are printable text"
                )
        # NUL has no meaning in ticket text and PostgreSQL cannot store it in TEXT columns:
        # left in, one such ticket would fail its whole batch's SQL write.
        value = value.replace("\x00", "")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"contains invalid Unicode at position {exc.start} (a lone surrogate)"
            ) from None
        return value

    @field_validator("subject", "body")
    @classmethod
    def _bounded(cls, value: str | None, info: ValidationInfo) -> str | None:
        # An over-long ticket is cut, not refused: a helpdesk cannot make it shorter by
        # resending, and a refusal would lose the ticket. The model reads 256 tokens anyway.
        limit = MAX_SUBJECT_CHARS if info.field_name == "subject" else MAX_BODY_CHARS
        return value[:limit] if value is not None else None

    @field_validator("subject", "queue")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None

    @model_validator(mode="after")
    def _has_text(self) -> Ticket:
        if not self.body and not self.subject:
            raise ValueError(
                "ticket has no text: body (or content/description) and subject are empty"
            )
        return self


def _as_utc(value: datetime | None) -> datetime | None:
    # Naive timestamps are taken as UTC so that comparisons never mix the two kinds.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem, each naming its field: what users see for a bad row or message."""
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "ticket"
        parts.append(f"{field}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


class TicketUpdate(_Message):
    """A helpdesk's report that a stored ticket changed: what an update message carries.

    Only what the event says is set: ``subject``/``body`` when the event carries the
    ticket's text (``text`` True), ``status`` when it carries a status, the tags it added or
    removed, the note or comment it added (``note``), and the feedback it implies
    (``merged_into``: the ticket it was merged into; ``duplicate``: closed as a duplicate).
    ``updated_at`` is the helpdesk's time of the change: an older one never overwrites a
    newer one. worker/lifecycle.py applies it.
    """

    event: str = Field(max_length=200)
    text: bool = False
    subject: str | None = Field(None, max_length=MAX_SUBJECT_CHARS)
    body: str | None = Field(None, max_length=MAX_BODY_CHARS)
    body_format: BodyFormat = "html"
    status: Status | None = None
    tags: tuple[str, ...] | None = None  # the whole set, when the event carries it
    tags_added: tuple[str, ...] = ()
    tags_removed: tuple[str, ...] = ()
    note: str | None = None
    merged_into: str | None = Field(None, max_length=255)
    duplicate: bool = False
    updated_at: datetime | None = None
    received_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @field_validator("updated_at", "received_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        return _as_utc(value)
