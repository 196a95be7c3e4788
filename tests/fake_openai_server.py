"""A stand-in OpenAI-compatible server for the engine-failure tests, run as its own process so a test can
kill it with SIGKILL: `python tests/fake_openai_server.py PORT LOG [--fail 500|html|hang|429] [--after N]
[--match TEXT] [--times K] [--retry-after S] [--delay S] [--delay-match TEXT]`.

GET /v1/models lists one model, `m`. POST answers `{"choices": [...]}` with the text `answer <n>.`, where n
counts the POSTs, unless the request fails: with `--fail`, every POST after the first `--after` ones (and,
with `--match`, only those whose body holds TEXT; with `--times`, only the first K such) gets HTTP 500, an
HTML page with HTTP 200, no answer at all (`hang`), or HTTP 429 with `Retry-After: S`. `--delay` waits S
seconds before each answer (with `--delay-match`, only for bodies holding TEXT). Each POST body is appended to
LOG as one JSON line with the answer it got and when it came (`t`, time.time()), so a test can count the
requests, read what was sent and when. `FakeServers` starts and kills them from a test.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path


class FakeServers:
    """Starts fake servers for a test (`start(*flags, port=...)` returns (url, process, request log)) and kills
    every one of them in `stop_all`, which the tests' fixtures call at teardown."""

    def __init__(self, folder: Path):
        self.folder, self.started = folder, []

    def start(self, *flags: str, port: int | None = None) -> tuple[str, subprocess.Popen, Path]:
        if port is None:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
        log = self.folder / f"requests-{len(self.started)}.jsonl"
        process = subprocess.Popen([sys.executable, __file__, str(port), str(log), *flags], start_new_session=True)
        self.started.append(process)
        url = f"http://127.0.0.1:{port}/v1"
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2):
                    return url, process, log
            except OSError:
                time.sleep(0.05)
        raise AssertionError("the fake server did not start")

    @staticmethod
    def kill(process: subprocess.Popen) -> None:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def stop_all(self) -> None:
        for process in self.started:
            self.kill(process)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("log")
    parser.add_argument("--fail", choices=["500", "html", "hang", "429"])
    parser.add_argument("--after", type=int, default=0)
    parser.add_argument("--match", default="")
    parser.add_argument("--times", type=int, default=None)
    parser.add_argument("--retry-after", default="1")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--delay-match", default="")
    args = parser.parse_args()
    lock, counter, failed = threading.Lock(), [0], [0]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            self._send(200, "application/json", json.dumps({"data": [{"id": "m"}]}))

        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            with lock:
                counter[0] += 1
                number = counter[0]
                fails = args.fail and number > args.after and args.match in body
                fails = fails and (args.times is None or failed[0] < args.times)
                failed[0] += bool(fails)
            answer = args.fail if fails else "ok"
            with open(args.log, "a", encoding="utf-8") as log:
                entry = {"n": number, "answer": answer, "t": time.time(), "body": json.loads(body)}
                log.write(json.dumps(entry) + "\n")
            if args.delay_match in body:
                time.sleep(args.delay)
            if answer == "hang":
                time.sleep(3600)
            elif answer == "500":
                self._send(500, "application/json", json.dumps({"error": "internal server error"}))
            elif answer == "html":
                self._send(200, "text/html", "<html><body>502 Bad Gateway</body></html>")
            elif answer == "429":
                self._send(429, "application/json", json.dumps({"error": "busy"}), {"Retry-After": args.retry_after})
            else:
                choice = {"message": {"role": "assistant", "content": f"answer {number}."}, "finish_reason": "stop"}
                reply = {"choices": [choice], "usage": {"completion_tokens": 2}}
                self._send(200, "application/json", json.dumps(reply))

        def _send(self, status: int, kind: str, text: str, headers: dict[str, str] | None = None) -> None:
            data = text.encode()
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
