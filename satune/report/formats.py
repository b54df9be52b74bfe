"""How the report writes what it repeats in several places: when a sweep started, which commit it
ran, a note that opens a sentence. One spelling each, for the figures, the page and tables.md."""

from __future__ import annotations

from datetime import datetime


def started(when: datetime) -> str:
    """`2024-05-06 07:08 UTC` (the sweep's parent run records its start in UTC)."""
    return f"{when:%Y-%m-%d %H:%M} UTC"


def revision(tags: dict[str, str], length: int | None = None) -> str:
    """The git commit the sweep ran (its first `length` characters), marked when the tree was dirty."""
    sha = tags.get("git.sha", "unknown")[:length]
    return sha + (" (uncommitted changes)" if tags.get("git.dirty") == "true" else "")


def capitalised(text: str) -> str:
    """`text` with its first letter capitalised and the rest as it was (unlike str.capitalize)."""
    return f"{text[0].upper()}{text[1:]}"
