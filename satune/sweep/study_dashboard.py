"""optuna-dashboard on a sweep's Optuna journal (`satune ui`), served by a thread of this process."""

from __future__ import annotations

import threading
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from satune.tracking import TrackingError


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # a line per request would bury the links
        pass


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class StudyDashboard:
    """optuna-dashboard on a sweep's Optuna journal, served by a thread of this process."""

    def __init__(self, journal: Path, host: str = "127.0.0.1", port: int = 8080):
        self.journal, self.host, self.port = journal, host, port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> StudyDashboard:
        import optuna_dashboard
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        app = optuna_dashboard.wsgi(JournalStorage(JournalFileBackend(str(self.journal))))
        try:
            self._server = make_server(self.host, self.port, app, _ThreadingWSGIServer, _QuietHandler)
        except OSError as exc:
            raise TrackingError(f"cannot serve optuna-dashboard on {self.uri} ({exc.strerror})") from None
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
