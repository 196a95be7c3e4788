"""`cai generate` on a fleet of OpenAI-compatible servers: pipelined rows against the chunked path's step barrier.

It starts `--servers` fake servers on 127.0.0.1, each its own process (this file with --serve): a server
answers up to `--slots` requests at once (a GPU server's batch), each after `--token-latency` seconds per
requested token (max_tokens), so a request takes L = token_latency x max_new_tokens; one server is `--slow`
times slower, and one is killed (SIGKILL) once `--kill-at` of the rows are written. It then runs the real
`run_generate` (critique/revision, one round, no few-shot examples) with the openai engine pointed at the
fleet, twice, each on a fresh fleet:
  before: --lockstep, chunk by chunk (`--batch-size` rows), each step waiting for its slowest request
  after:  pipelined, `--batch-size` rows in progress, each going on as soon as its last step returns
Both send at most `--concurrency` requests at a time (max_concurrency; by default 1.5 x servers x slots, so
each server has a few requests queued behind its busy slots, as a vllm server has, and the client's own time
between a row's steps leaves no slot idle).

It prints requests/s against the ideal, the rate at which every slot of every server is busy all the time it
is up: ideal = sum over servers of slots / L_server x (seconds the server was up during the run) / (run
seconds); and each server's idle share: 1 - (seconds of requests it answered) / (slots x seconds it was up).
It checks that generations.jsonl holds every prompt id exactly once, and prints the client's ceiling: the
requests/s the same client reaches against servers with no latency.

    python benchmarks/fleet.py                    # 2,000 prompts, about 3 minutes on 2 cores
    python benchmarks/fleet.py --prompts 300      # a quick look
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
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# -- the fake server ----------------------------------------------------------------------------------


def serve(port: int, token_latency: float, slots: int, log: str) -> None:
    """Answer /v1/models and chat completions; each answer holds one of `slots` for token_latency x max_tokens
    seconds. Each answered request appends `start end` (time.time()) to `log`."""
    free = threading.BoundedSemaphore(slots)
    out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802 (http.server's naming)
            self._send({"data": [{"id": "m"}]})

        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            with free:
                start = time.time()
                time.sleep(token_latency * int(body.get("max_tokens") or 16))
                end = time.time()
            os.write(out, f"{start} {end}\n".encode())
            reply = {"role": "assistant", "content": f"An answer of the server on port {port}, at {end:.6f}."}
            self._send({"choices": [{"message": reply, "finish_reason": "stop"}], "usage": {"completion_tokens": 12}})

        def _send(self, answer: dict) -> None:
            data = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.request_queue_size = 256
    server.serve_forever()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Fleet:
    """`latencies` fake servers (seconds per token each), started as processes and killed at the end."""

    def __init__(self, folder: Path, latencies: list[float], slots: int):
        self.slots, self.latencies, self.processes, self.urls, self.logs = slots, latencies, [], [], []
        for k, latency in enumerate(latencies):
            port, log = free_port(), folder / f"server{k}.log"
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--serve", str(port), str(latency), str(slots), str(log)],
                    start_new_session=True,
                )
            )
            self.urls.append(f"http://127.0.0.1:{port}/v1")
            self.logs.append(log)
        for url in self.urls:
            deadline = time.time() + 30
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/models", timeout=2):
                        break
                except OSError:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.05)
        self.killed_at: dict[int, float] = {}

    def kill(self, k: int) -> None:
        self.killed_at[k] = time.time()
        os.killpg(self.processes[k].pid, signal.SIGKILL)
        self.processes[k].wait()

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def served(self, k: int) -> list[tuple[float, float]]:
        text = self.logs[k].read_text() if self.logs[k].exists() else ""
        return [(float(a), float(b)) for a, b in (line.split() for line in text.splitlines() if line.strip())]


# -- one run ------------------------------------------------------------------------------------------


def run(name: str, args: argparse.Namespace, folder: Path, lockstep: bool, latencies: list[float], kill: bool) -> dict:
    from cai_kit.engines import load_engine
    from cai_kit.generation.generate import run_generate
    from cai_kit.generation.options import GenerateOptions

    (folder / name).mkdir(parents=True)
    fleet = Fleet(folder / name, latencies, args.slots)
    prompts = folder / "prompts.jsonl"
    out = folder / name / "out"
    try:
        engine = load_engine("openai", "m", base_urls=fleet.urls, max_concurrency=args.concurrency, progress=False)
        options = GenerateOptions(
            constitution=str(ROOT / "constitutions" / "harmless.yaml"),
            prompts=[str(prompts)],
            model="m",
            engine="openai",
            limit=0,
            out=str(out),
            few_shot=0,
            rounds=1,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            lockstep=lockstep,
        )
        stop = threading.Event()

        def kill_when_due() -> None:  # the last server dies once --kill-at of the rows are written
            generations = out / "generations.jsonl"
            while not stop.wait(0.05):
                written = generations.read_bytes().count(b"\n") if generations.exists() else 0
                if written >= args.kill_at * args.prompts:
                    fleet.kill(len(latencies) - 1)
                    return

        killer = threading.Thread(target=kill_when_due, daemon=True)
        if kill:
            killer.start()
        started = time.time()
        run_generate(options, engine=engine, licences_checked=True)
        ended = time.time()
        stop.set()
    finally:
        fleet.close()
    ids = [json.loads(line)["id"] for line in (out / "generations.jsonl").read_text().splitlines()]
    servers = []
    ideal = 0.0
    for k, per_token in enumerate(latencies):
        latency = per_token * args.max_new_tokens
        up = min(fleet.killed_at.get(k, ended), ended) - started
        busy = sum(min(b, ended) - max(a, started) for a, b in fleet.served(k) if b > started)
        ideal += args.slots / latency * up if latency else 0.0
        servers.append(
            {"latency": latency, "up": up, "answered": len(fleet.served(k)), "idle": 1 - busy / (args.slots * up)}
        )
    seconds = ended - started
    requests = 3 * len(ids)  # a first answer, a critique and a revision per row
    return {
        "name": name,
        "seconds": seconds,
        "rps": requests / seconds,
        "ideal": ideal / seconds,
        "servers": servers,
        "rows": len(ids),
        "unique": len(set(ids)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=2000)
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--slots", type=int, default=8, help="requests a server answers at once")
    parser.add_argument("--token-latency", type=float, default=0.003, help="seconds per requested token")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--slow", type=float, default=3.0, help="the first server's latency, times the others'")
    parser.add_argument("--kill-at", type=float, default=0.4, help="share of rows written when the last server dies")
    parser.add_argument("--concurrency", type=int, default=48, help="max_concurrency: requests in flight, all URLs")
    parser.add_argument("--batch-size", type=int, default=96, help="rows per chunk (before), rows in progress (after)")
    parser.add_argument("--serve", nargs=4, metavar=("PORT", "TOKEN_LATENCY", "SLOTS", "LOG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        port, latency, slots, log = args.serve
        serve(int(port), float(latency), int(slots), log)
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    latencies = [args.token_latency * args.slow] + [args.token_latency] * (args.servers - 1)
    with tempfile.TemporaryDirectory(prefix="cai-fleet-") as tmp:
        folder = Path(tmp)
        (folder / "prompts.jsonl").write_text(
            "".join(
                json.dumps({"id": f"p{k}", "prompt": f"Question {k}: how do I keep a sourdough starter alive?"}) + "\n"
                for k in range(args.prompts)
            )
        )
        print(
            f"{args.prompts} prompts, {args.servers} servers x {args.slots} slots, L = "
            f"{args.token_latency * args.max_new_tokens:.3f} s a request ({args.slow:g}x on server 0), server "
            f"{args.servers - 1} killed at {args.kill_at:.0%} of the rows; {os.cpu_count()} CPUs",
            file=sys.stderr,
        )
        ceiling_prompts = min(args.prompts, 400)
        ceiling_args = argparse.Namespace(**{**vars(args), "prompts": ceiling_prompts})
        (folder / "ceiling").mkdir()
        ceiling_folder = folder / "ceiling"
        (ceiling_folder / "prompts.jsonl").write_text(
            "".join((folder / "prompts.jsonl").read_text().splitlines(keepends=True)[:ceiling_prompts])
        )
        ceiling = run("no-latency", ceiling_args, ceiling_folder, False, [0.0] * args.servers, kill=False)
        results = [
            run(name, args, folder, lockstep, latencies, kill=True)
            for name, lockstep in (("before", True), ("after", False))
        ]
    print(
        f"\nclient ceiling (same client, {ceiling_prompts} prompts, servers with no latency): "
        f"{ceiling['rps']:.0f} requests/s"
    )
    print(
        "\n| run | seconds | requests/s | ideal requests/s | ratio to ideal | idle share per server (0 slow, "
        f"{args.servers - 1} killed) | rows written (unique) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for result in results:
        idle = ", ".join(f"{s['idle']:.2f}" for s in result["servers"])
        print(
            f"| {result['name']} | {result['seconds']:.1f} | {result['rps']:.1f} | {result['ideal']:.1f} | "
            f"{result['rps'] / result['ideal']:.2f} | {idle} | {result['rows']} ({result['unique']}) |"
        )
    before, after = results
    print(f"\nafter / before: {after['rps'] / before['rps']:.2f}x requests/s")
    lost = [r["name"] for r in results if r["rows"] != args.prompts or r["unique"] != args.prompts]
    print("every prompt id written exactly once" if not lost else f"rows lost or repeated in: {', '.join(lost)}")


if __name__ == "__main__":
    main()
