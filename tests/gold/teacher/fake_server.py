"""A stand-in for a vLLM teacher server, for tests without vLLM: one thread on 127.0.0.1 answering ``/health``,
``/v1/models``, ``/tokenize`` and ``/v1/completions`` (``prompt_logprobs``) as vLLM words them. The URL's first path
segment picks a behaviour: ``good`` (the mistral-v1 tokenizer's ids, log-prob -1 for every actual token),
``mismatch`` (``/tokenize`` answers other ids: another tokenizer) or ``nan`` (every log-prob NaN: a broken model)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.conftest import zoo

KINDS = ("good", "mismatch", "nan")
_server: ThreadingHTTPServer | None = None


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _answer(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()  # NaN is written as NaN, as Python's JSON reads it
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self) -> tuple[str, str]:
        _, kind, path = self.path.split("/", 2)
        return kind, "/" + path

    def do_GET(self) -> None:
        kind, path = self._route()
        if kind not in KINDS:
            self._answer(404, {"detail": "Not Found"})
        elif path == "/health":
            self._answer(200, {})
        elif path == "/v1/models":
            self._answer(200, {"data": [{"id": "fake-teacher"}]})
        else:
            self._answer(404, {"detail": "Not Found"})

    def do_POST(self) -> None:
        kind, path = self._route()
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if path == "/tokenize":
            ids = zoo("mistral-v1")(body["prompt"], add_special_tokens=False)["input_ids"]
            self._answer(200, {"tokens": [i + 7 for i in ids] if kind == "mismatch" else ids, "count": len(ids)})
        elif path == "/v1/completions":
            value = float("nan") if kind == "nan" else -1.0
            positions = [None] + [{str(i): {"logprob": value, "rank": 1}} for i in body["prompt"][1:]]
            self._answer(200, {"choices": [{"index": 0, "text": "", "prompt_logprobs": positions}]})
        else:
            self._answer(404, {"detail": "Not Found"})


def fake_teacher_url(kind: str) -> str:
    """The base URL of the fake server's ``kind`` behaviour (the server starts on the first call)."""
    global _server
    if _server is None:
        _server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        threading.Thread(target=_server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{_server.server_address[1]}/{kind}"


def closed_port() -> int:
    """A localhost port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
