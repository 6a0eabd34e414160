"""The one rule for what counts as a text, shared by every input path.

Files read by ``data`` (training and ``predict``), ``mlflow.pyfunc`` and ``mlflow models serve``
(``pyfunc.texts_from_input``) all sort their values with ``problems``: a value that is not a
string (null, NaN, a number, a list...) or not valid Unicode is always refused; a ``blank`` string
(empty, or only whitespace and ``INVISIBLE`` marks) is refused unless the caller skips such rows
(``predict --skip_empty``, the pyfunc param ``skip_empty``), which then get an empty label and
empty probabilities. A text
longer than ``max_chars`` characters (where a caller bounds them: texts to label, ``DEFAULT_MAX_CHARS``)
is refused before any tokenizer sees it: one huge text would otherwise hold a worker for minutes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

SHOWN = 5
DEFAULT_MAX_CHARS = 100_000
"""Characters one text to label may hold: far above any real message or review, far below what stalls a worker."""
INVISIBLE = (
    "\u00ad\u061c\u180e\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
    "\u2060\u2061\u2062\u2063\u2064\u2066\u2067\u2068\u2069\ufeff"
)
"""Marks that show nothing on their own and that ``str.strip`` keeps: the soft hyphen, zero-width characters
(space, joiners, word joiner, byte order mark), invisible operators and the direction marks, embeddings and
isolates. A text of only these and whitespace looks empty, and is empty to this rule."""
_DROP_INVISIBLE = dict.fromkeys(map(ord, INVISIBLE))


@dataclass(frozen=True)
class TextProblems:
    """Positions (row numbers, line numbers...) of the values that are no usable text."""

    not_text: list[Any]
    """Not a string: null, NaN, a number, a list."""
    invalid_unicode: list[Any]
    """A string holding a lone surrogate (JSON's ``"\\ud800"``), which no file or tokenizer can take."""
    empty: list[Any]
    """``blank``: the empty string, or only whitespace and invisible marks."""
    too_long: list[Any] = field(default_factory=list)
    """Longer than ``max_chars`` characters."""
    max_chars: int | None = None

    def refused(self, skip_empty: bool) -> bool:
        return bool(self.not_text or self.invalid_unicode or self.too_long or (self.empty and not skip_empty))

    def describe(self, unit: str, skip_empty: bool) -> str:
        """``2 null or non-text value(s) (rows 0, 3)`` and so on for each kind refused, joined by '; '."""
        parts = []
        if self.not_text:
            parts.append(f"{len(self.not_text)} null or non-text value(s) ({where(self.not_text, unit)})")
        if self.invalid_unicode:
            parts.append(
                f"{len(self.invalid_unicode)} text(s) that are not valid Unicode, such as a lone surrogate "
                f"'\\ud800' ({where(self.invalid_unicode, unit)})"
            )
        if self.empty and not skip_empty:
            parts.append(f"{len(self.empty)} empty or whitespace-only text(s) ({where(self.empty, unit)})")
        if self.too_long:
            parts.append(
                f"{len(self.too_long)} text(s) longer than {self.max_chars:,} characters ({where(self.too_long, unit)})"
            )
        return "; ".join(parts)


def problems(
    values: Iterable[Any], positions: Sequence[Any] | None = None, max_chars: int | None = None
) -> TextProblems:
    """Sort ``values`` by what is wrong with them; ``positions`` name them (default 0, 1, 2...).

    ``max_chars`` bounds a text's length (None: no bound).
    """
    not_text, invalid_unicode, empty, too_long = [], [], [], []
    for index, value in enumerate(values):
        position = positions[index] if positions is not None else index
        if not isinstance(value, str):
            not_text.append(position)
        elif max_chars is not None and len(value) > max_chars:
            too_long.append(position)
        elif blank(value):
            empty.append(position)
        elif not _encodable(value):
            invalid_unicode.append(position)
    return TextProblems(not_text, invalid_unicode, empty, too_long, max_chars)


def blank(text: str) -> bool:
    """Whether ``text`` shows nothing: empty, or only whitespace and ``INVISIBLE`` marks."""
    return not text.strip() or not text.translate(_DROP_INVISIBLE).strip()


def where(positions: Sequence[Any], unit: str) -> str:
    """``rows 0, 3, 7, ...``: the first few positions with their unit."""
    shown = ", ".join(str(position) for position in positions[:SHOWN]) + (", ..." if len(positions) > SHOWN else "")
    return f"{unit}{'s' if len(positions) > 1 else ''} {shown}"


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
