"""`local_server`: waiting for a real process on a loopback port, bounded, whatever the server is doing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import requests

from emotion_exp import serving
from emotion_exp.serving import ServerNotReady, local_server

# Answers /health after a pause on its first request only: a server busy starting (a database
# migration, a worker importing its app) that has bound its port but cannot answer yet.
SLOW_FIRST_ANSWER = """
import http.server, sys, time
first = [True]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if first[0]:
            first[0] = False
            time.sleep(1.0)
        self.send_response(200); self.end_headers(); self.wfile.write(b"OK")
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def test_a_server_too_slow_to_answer_its_first_readiness_request_is_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(serving, "READY_POLL_TIMEOUT_S", 0.3)
    with local_server(
        lambda port: [sys.executable, "-c", SLOW_FIRST_ANSWER, str(port)], "/health", tmp_path / "log", timeout_s=30
    ) as url:
        assert requests.get(f"{url}/health", timeout=5).text == "OK"


def test_a_server_that_exits_while_starting_is_reported_with_its_log(tmp_path: Path) -> None:
    failing = [sys.executable, "-c", "import sys; print('cannot open the store'); sys.exit(3)"]
    with (
        pytest.raises(ServerNotReady, match=r"exited with 3:\ncannot open the store"),
        local_server(lambda port: failing, "/health", tmp_path / "log", timeout_s=30),
    ):
        pytest.fail("the block ran although the server never answered")
