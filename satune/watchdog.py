"""A watchdog for a server the sweep depends on (the MLflow server, the object store)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def watched(
    probe: Callable[[], str | None],
    patience: float,
    on_lost: Callable[[str], None],
    every: float = 2.0,
    name: str = "watchdog",
) -> Iterator[None]:
    """While the block runs, `probe()` is asked every `every` seconds: None when the server
    answered, else why not. Once it has not answered for `patience` seconds, `on_lost(why)` is
    called, once, from another thread."""
    done = threading.Event()

    def watch() -> None:
        down_since = None
        while not done.wait(every):
            why = probe()
            if why is None:
                down_since = None
                continue
            down_since = down_since or time.monotonic()
            if time.monotonic() - down_since >= patience:
                return on_lost(why)

    thread = threading.Thread(target=watch, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
