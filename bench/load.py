"""Many simulated users against a running daemon: latency, TTFT, tokens/s and errors per
model, over time, against the loads, evictions and swaps the daemon decided meanwhile.

Each user loops: pick a model (``--chat-share`` of the picks go to the ``--chat`` model as a
streaming OpenAI chat, the rest to a ``--predict`` model with a short text), send, record,
think (exponential, mean ``--think`` seconds). Users start linearly over ``--ramp`` s; after
``--duration`` s (counted from the first user) no new request starts, in-flight ones get
``--grace`` s and are then counted as "cut off". One httpx.AsyncClient whose connection
limit is the number of users, so the pool never queues a user behind another one.

Writes OUT/summary.json, OUT/requests.csv and OUT/load.png (or ``--plot``); prints a table.

    .venv/bin/python bench/load.py --url http://127.0.0.1:8000 --predict tiny-bert \\
        --chat tiny-llama --chat-share 0.3 --users 50 --ramp 10 --duration 30 --out /tmp/load
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.load_plot import plot
from bench.load_stats import (
    CONNECTION_ERROR,
    CUT_OFF,
    TIMEOUT,
    Record,
    SseReader,
    StreamCount,
    buckets,
    fmt_seconds,
    markers,
    summarize_run,
    table,
    triple,
)

PROMPTS = ["great film", "awful service", "the weather is fine today", "hello there", "not bad at all"]


def raise_fd_limit(users: int) -> tuple[int, int]:
    """Each user keeps one connection open (plus the loop's own files): raise the soft
    RLIMIT_NOFILE toward the hard one instead of failing at 1024 with 'Too many open files'."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = users * 2 + 256
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    return soft, hard


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.records: list[Record] = []
        self.user_spans: dict[int, list[float]] = {}
        self.stop_at = 0.0
        self.lags: list[float] = []  # how late the client's own loop woke up (see probe)
        headers = {}
        if args.api_key:
            headers["Authorization"] = f"Bearer {args.api_key}"
        if args.max_wait is not None:
            headers["X-Max-Wait-Seconds"] = str(args.max_wait)
        # httpx's pool looks through all its connections for every request (CPU per request
        # grows with the pool), so users share --users-per-client-sized pools instead of one
        # of 1,000; each pool's limit is above its users, so no user ever waits for another.
        shards = max(1, -(-args.users // max(1, args.users_per_client)))
        per = -(-args.users // shards) + 4
        # An idle connection is dropped before the daemon's own keep-alive timeout (uvicorn's
        # 5 s) runs out: reusing one the server is closing at that moment is a ReadError.
        limits = httpx.Limits(max_connections=per, max_keepalive_connections=per,
                              keepalive_expiry=args.keepalive_expiry)
        timeout = httpx.Timeout(args.timeout, connect=min(args.timeout, args.connect_timeout))
        self.clients = [httpx.AsyncClient(base_url=args.url.rstrip("/"), headers=headers, limits=limits,
                                          timeout=timeout) for _ in range(shards)]
        self.client = self.clients[0]  # for the daemon's /decisions at the end

    def client_of(self, record: Record) -> httpx.AsyncClient:
        return self.clients[record.user % len(self.clients)]

    async def predict(self, record: Record, rng: random.Random) -> None:
        body = {"inputs": rng.choice(PROMPTS)}
        if self.args.predict_params:
            body["parameters"] = json.loads(self.args.predict_params)
        answer = await self.client_of(record).post(f"/predict/{record.model}", json=body)
        record.status = str(answer.status_code)

    async def chat(self, record: Record, rng: random.Random, began: float) -> None:
        body = {"model": record.model, "stream": True, "max_tokens": self.args.max_tokens,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": rng.choice(PROMPTS)}]}
        async with self.client_of(record).stream("POST", "/v1/chat/completions", json=body) as answer:
            if answer.status_code != 200:
                await answer.aread()
                record.status = str(answer.status_code)
                return
            reader, count = SseReader(), StreamCount()
            async for chunk in answer.aiter_raw():
                for data in reader.feed(chunk):
                    if count.add(data) and record.ttft is None:
                        record.ttft = time.perf_counter() - began
            record.tokens = count.tokens
            record.status = "200" if count.done or count.tokens else "200 (no content)"

    async def one(self, record: Record, rng: random.Random) -> None:
        began = time.perf_counter()
        try:
            call = self.chat(record, rng, began) if record.kind == "chat" else self.predict(record, rng)
            await asyncio.wait_for(call, self.args.timeout)
        except (TimeoutError, httpx.TimeoutException):
            record.status = TIMEOUT
        except httpx.TransportError as exc:
            record.status, record.note = CONNECTION_ERROR, type(exc).__name__
        except asyncio.CancelledError:
            record.status = CUT_OFF
            raise
        finally:
            record.latency = time.perf_counter() - began
            record.end = time.time()

    async def user(self, index: int, delay: float) -> None:
        rng = random.Random(self.args.seed * 100003 + index)
        await asyncio.sleep(delay)
        span = self.user_spans.setdefault(index, [time.time(), 0.0])
        try:
            while time.time() < self.stop_at:
                use_chat = self.args.chat and (not self.args.predict or rng.random() < self.args.chat_share)
                model = self.args.chat if use_chat else rng.choice(self.args.predict)
                record = Record(user=index, model=model, kind="chat" if use_chat else "predict", start=time.time())
                self.records.append(record)
                await self.one(record, rng)
                if self.args.think > 0:
                    await asyncio.sleep(min(rng.expovariate(1 / self.args.think), max(0.0, self.stop_at - time.time())))
        finally:
            span[1] = time.time()

    async def probe(self) -> None:
        """Every 100 ms, how late this loop wakes: a slow 429 with a small lag here was
        slow in the daemon, not in this client."""
        while True:
            began = time.perf_counter()
            await asyncio.sleep(0.1)
            self.lags.append(time.perf_counter() - began - 0.1)

    async def main(self) -> dict[str, Any]:
        args = self.args
        t0 = time.time()
        self.stop_at = t0 + args.duration
        ramp = min(args.ramp, args.duration)
        probe = asyncio.create_task(self.probe())
        tasks = [asyncio.create_task(self.user(i, ramp * i / max(1, args.users))) for i in range(args.users)]
        await asyncio.sleep(args.duration)
        _done, pending = await asyncio.wait(tasks, timeout=args.grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        t1 = time.time()
        probe.cancel()
        for record in self.records:  # a cancel inside the wait can leave a blank end
            if record.end == 0.0:
                record.end, record.status = t1, CUT_OFF
        decisions = await self.decisions()
        for client in self.clients:
            await client.aclose()
        return {"t0": t0, "t1": t1, "decisions": decisions, "cut_off_tasks": len(pending)}

    async def decisions(self) -> list[dict[str, Any]]:
        try:
            answer = await self.client.get("/decisions", params={"limit": 500}, timeout=30)
            return answer.json().get("decisions", []) if answer.status_code == 200 else []
        except (httpx.HTTPError, ValueError):
            return []


def write_outputs(out: Path, run: Run, result: dict[str, Any], summary: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    with (out / "requests.csv").open("w", newline="") as handle:
        fields = list(Record(0, "", "", 0.0).row())
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for record in run.records:
            writer.writerow(record.row())
    (out / "decisions.json").write_text(json.dumps(result["decisions"], indent=1))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the daemon's gateway")
    parser.add_argument("--api-key", default=None, help="sent as Authorization: Bearer KEY")
    parser.add_argument("--predict", default="", help="MODEL[,MODEL]: POST /predict/NAME with a short text")
    parser.add_argument("--predict-params", default=None, help='JSON "parameters" for /predict, e.g. {"top_k": 1}')
    parser.add_argument("--chat", default=None, help="MODEL for streaming POST /v1/chat/completions")
    parser.add_argument("--chat-share", type=float, default=0.5, help="share of picks that go to --chat (0..1)")
    parser.add_argument("--max-tokens", type=int, default=16, help="max_tokens of each chat")
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--ramp", type=float, default=10.0, help="seconds over which users start, linearly")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds from the first user to the stop")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds in-flight requests get after the stop")
    parser.add_argument("--think", type=float, default=1.0, help="mean think time (exponential), seconds")
    parser.add_argument("--timeout", type=float, default=60.0, help="whole-request timeout, seconds")
    parser.add_argument("--connect-timeout", type=float, default=10.0)
    parser.add_argument("--keepalive-expiry", type=float, default=3.0,
                        help="seconds an idle connection is kept; under the server's keep-alive (uvicorn: 5)")
    parser.add_argument("--users-per-client", type=int, default=50,
                        help="users sharing one httpx.AsyncClient (its pool is sized to them)")
    parser.add_argument("--max-wait", type=float, default=None, help="X-Max-Wait-Seconds sent with every request")
    parser.add_argument("--bucket", type=float, default=2.0, help="plot bucket width, seconds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("load-out"), help="folder for summary.json, requests.csv")
    parser.add_argument("--plot", type=Path, default=None, help="PNG path (default OUT/load.png)")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    args.predict = [m for m in args.predict.split(",") if m]
    if not args.predict and not args.chat:
        parser.error("give --predict MODEL[,MODEL] and/or --chat MODEL")
    if not 0 <= args.chat_share <= 1:
        parser.error("--chat-share is a share, 0..1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    soft, _ = raise_fd_limit(args.users)
    run = Run(args)
    try:
        import uvloop  # the daemon's loop; a faster client leaves more of the machine to it
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    load_before = os.getloadavg()[0]  # the machine is shared: say how busy it was
    result = runner(run.main())
    t0, t1 = result["t0"], result["t1"]
    window = args.duration
    summary = summarize_run(run.records, window, len(run.user_spans), args.users)
    marks = markers(result["decisions"], t0, t1)
    summary["markers"] = {kind: sum(1 for m in marks if m.kind == kind) for kind in sorted({m.kind for m in marks})}
    summary["marker_list"] = [m.__dict__ for m in marks]
    summary["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    usage = resource.getrusage(resource.RUSAGE_SELF)  # the client competes for the same cores
    summary["client"] = {"cpu_s": usage.ru_utime + usage.ru_stime, "fd_soft_limit": soft,
                         "cut_off_users": result["cut_off_tasks"], "t0": t0, "t1": t1,
                         "loop_lag_s": triple(run.lags), "loop_lag_max_s": max(run.lags, default=0.0),
                         "loadavg_1m_before": load_before, "loadavg_1m_after": os.getloadavg()[0]}
    write_outputs(args.out, run, result, summary)
    spans = [(begin, end or t1) for begin, end in run.user_spans.values()]
    series = buckets(run.records, t0, t1, args.bucket, spans)
    title = args.title or f"{args.users} users, {args.ramp:.0f} s ramp, {args.duration:.0f} s run"
    png = plot(args.plot or args.out / "load.png", run.records, series, marks, t0, args.bucket, title,
               stop=args.duration)
    print(table(summary))
    print("daemon decisions in the window: " + (", ".join(f"{k}: {v}" for k, v in summary["markers"].items()) or "none"))
    lag = summary["client"]["loop_lag_s"]
    print(f"client loop lag p50 {fmt_seconds(lag['p50'])}, p99 {fmt_seconds(lag['p99'])}, "
          f"max {fmt_seconds(summary['client']['loop_lag_max_s'])}")
    print(f"client CPU {summary['client']['cpu_s']:.1f} s over {t1 - t0:.1f} s (fd limit {soft}); "
          f"load average {load_before:.1f} before, {summary['client']['loadavg_1m_after']:.1f} after")
    print(f"wrote {args.out / 'summary.json'}, {args.out / 'requests.csv'}, {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
