"""A fake Hugging Face Daily Papers API in its own process, for fault tests of the fetch job.

    python -m tests.feed_server --port 0 --ready-file F --data PAPERS.json
        [--mode good|500|garbage] [--control FILE] [--log FILE.jsonl]

``GET /api/daily_papers?date=…`` answers with the file ``--data`` (mode ``good``), an HTTP 500
(``500``) or a 200 whose body is not JSON (``garbage``). The mode comes from ``--mode`` and is
replaced by ``{"mode": …}`` in the control file, re-read on every request. Each request is
appended to the log as one JSON line (``ts``, ``path``, ``mode``), flushed at once.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

MODES = ("good", "500", "garbage")
GARBAGE = b"<html><body>Bad gateway, or something; certainly not JSON"


class FeedServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, data: Path, mode: str, control: Path | None, log: Path | None):
        super().__init__(("127.0.0.1", port), _Handler)
        self.data, self.mode, self.control, self.log = data, mode, control, log
        self.lock = threading.Lock()

    def current_mode(self) -> str:
        if self.control is not None:
            try:
                mode = json.loads(self.control.read_text(encoding="utf-8")).get("mode")
            except (OSError, ValueError):
                mode = None  # absent or half-written: keep the last mode
            if mode in MODES:
                self.mode = mode
        return self.mode

    def record(self, **entry: Any) -> None:
        if self.log is None:
            return
        entry["ts"] = time.time()
        with self.lock, self.log.open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")


class _Handler(BaseHTTPRequestHandler):
    server: FeedServer

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        with self.server.lock:
            mode = self.server.current_mode()
        self.server.record(path=self.path, mode=mode)
        if path != "/api/daily_papers":
            self._answer(404, b'{"error": "not found"}')
        elif mode == "500":
            self._answer(500, b'{"error": "Internal Server Error"}')
        elif mode == "garbage":
            self._answer(200, GARBAGE)
        else:
            self._answer(200, self.server.data.read_bytes())

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the JSON log says what was asked


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tests.feed_server")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--ready-file", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="Daily Papers JSON to serve")
    p.add_argument("--mode", choices=MODES, default="good")
    p.add_argument("--control", type=Path, help='JSON {"mode": …} re-read per request')
    p.add_argument("--log", type=Path, help="JSON Lines, one per request")
    args = p.parse_args(argv)
    server = FeedServer(args.port, args.data, args.mode, args.control, args.log)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    tmp = args.ready_file.with_name(args.ready_file.name + ".tmp")
    tmp.write_text(str(server.server_address[1]), encoding="utf-8")
    os.replace(tmp, args.ready_file)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
