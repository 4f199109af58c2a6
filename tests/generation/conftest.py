"""A stub OpenAI-compatible server (stdlib http.server in a thread, loopback) for engine and resume tests."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class StubServer:
    """Answers /v1/chat/completions after ``delay_s``: the first ``fail_first`` requests with
    ``fail_status`` (the body echoes the request's Authorization header, like a careless proxy would),
    then a reply that depends only on the question and the seed:
    ``reasoning = "<question> (seed <seed>)"``, ``content = "\\boxed{3}"``, 7 prompt and 11 completion tokens
    (no ``usage`` at all with ``usage=False``). A failure carries ``fail_headers`` (a callable gets the request
    number), by default ``Retry-After: 0``; ``delay_s`` may be a callable of the question. ``times`` holds each
    request's (arrival, reply) on the monotonic clock."""

    def __init__(self, fail_first: int = 0, fail_status: int = 429, delay_s=0.0, fail_headers=None,
                 usage: bool = True):
        self.fail_first, self.fail_status, self.delay_s = fail_first, fail_status, delay_s
        self.fail_headers = {"Retry-After": "0"} if fail_headers is None else fail_headers
        self.usage = usage
        self.requests: list[tuple[dict, str | None]] = []
        self.times: list[tuple[float, float]] = []
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                auth = self.headers.get("Authorization")
                arrived = time.monotonic()
                with stub._lock:
                    stub.requests.append((body, auth))
                    number = len(stub.requests)
                question = body["messages"][-1]["content"]
                time.sleep(stub.delay_s(question) if callable(stub.delay_s) else stub.delay_s)
                if number <= stub.fail_first:
                    headers = stub.fail_headers(number) if callable(stub.fail_headers) else stub.fail_headers
                    stub.times.append((arrived, time.monotonic()))
                    self._send(stub.fail_status, {"error": {"message": f"busy; you sent {auth}"}}, headers)
                    return
                reply = {"role": "assistant", "content": "\\boxed{3}", "reasoning": f"{question} (seed {body['seed']})"}
                payload = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                           "choices": [{"index": 0, "message": reply, "finish_reason": "stop"}]}
                if stub.usage:
                    payload["usage"] = {"prompt_tokens": 7, "completion_tokens": 11, "total_tokens": 18}
                stub.times.append((arrived, time.monotonic()))
                self._send(200, payload)

            def _send(self, status, payload, headers=None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", "Content-Length": str(len(data)),
                             **(headers or {})}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> StubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def openai_stub():
    """The :class:`StubServer` class: ``with openai_stub(fail_first=2) as server: ...``."""
    return StubServer
