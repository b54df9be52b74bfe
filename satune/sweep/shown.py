"""How satune shows a value in a line, a table cell or a label: one rule for every table and view."""

from __future__ import annotations

from typing import Any


def shown(value: Any, *, digits: int = 4, width: int | None = None, missing: str = "-") -> str:
    """A float to `digits` significant digits, anything else as text; cut to `width` with an ellipsis."""
    if value is None:
        return missing
    text = f"{value:.{digits}g}" if isinstance(value, float) else str(value)
    return text if width is None or len(text) <= width else text[: width - 1] + "…"
