"""``bpo proxy``'s own latency: BPO proxy vs a plain pass-through proxy on the same stack.

Three ways to the same upstream (the scripted OpenAI-compatible server on loopback, in a process
of its own), one request at a time from a keep-alive ``httpx.Client``: straight to the upstream;
through the plain proxy (``create_app(config, optimizer=None)``: the same FastAPI + httpx2
forwarding, the rewrite step off); through the BPO proxy with an instant optimizer
(``CallableBackend`` whose async function returns ``prompt + " Answer step by step."``, cache
off), so that every request is parsed, goes through the whole optimizer and is rebuilt with the
rewrite. Each server runs in its own process, as it would be deployed. A proxy's added latency is
its median time minus the direct median. The ways take turns request by request.
"""

from __future__ import annotations

import multiprocessing
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from benchmarks._common import Figure, Section, fmt_s

TARGET_RATIO = 1.5
SUFFIX = " Answer step by step."
DIRECT = "straight to the upstream"
PLAIN = "plain pass-through proxy (rewrite step off)"
BPO = "BPO proxy (instant optimizer)"
MODEL = "scripted-bpo"
QUESTION = "How do I sort a list of tuples by the second item in Python?"
BODY = {
    "model": MODEL,
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": QUESTION},
    ],
    "temperature": 0.2,
}


async def arewrite(prompt: str) -> str:
    return prompt + SUFFIX


def _serve(kind: str, port: int, upstream: str) -> None:
    """A child process's entry: the echoing upstream, the plain proxy or the BPO proxy."""
    if kind == "upstream":
        from bpo_integrations.testing.servers import ScriptedServer

        ScriptedServer(model_id=MODEL, port=port).start()  # echoes the last user message
        threading.Event().wait()
    from bpo_integrations import BPOOptimizer
    from bpo_integrations.backends import CallableBackend
    from bpo_integrations.proxy import ProxyConfig, run

    optimizer = BPOOptimizer(CallableBackend(arewrite), cache_size=0) if kind == "bpo" else None
    run(ProxyConfig(upstream=upstream, port=port), optimizer, log_level="warning")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _servers(startup_timeout: float = 120.0) -> Iterator[dict[str, str]]:
    """Start the upstream and both proxies, each in a process; yield the base URL of each way."""
    import httpx

    context = multiprocessing.get_context("spawn")
    ports = {name: _free_port() for name in (DIRECT, PLAIN, BPO)}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    upstream = urls[DIRECT] + "/v1"
    kinds = {DIRECT: "upstream", PLAIN: "plain", BPO: "bpo"}
    processes = [
        context.Process(target=_serve, args=(kinds[name], ports[name], upstream), daemon=True)
        for name in urls
    ]
    try:
        for process in processes:
            process.start()
        deadline = time.monotonic() + startup_timeout
        for name, url in urls.items():
            while True:
                try:
                    if httpx.get(url + "/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or not all(p.is_alive() for p in processes):
                    raise RuntimeError(f"the benchmark's {name} server did not start")
                time.sleep(0.05)
        yield urls
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(timeout=30)


def _caller(client: Any, url: str, stream: bool) -> Callable[[], str]:
    body = {**BODY, "stream": stream}

    def call() -> str:
        with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
            data = b"".join(response.iter_raw())
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}: {data[:200]!r}")
        return data.decode()

    return call


def time_ways(*, calls: int, repeats: int) -> dict[tuple[str, bool], float]:
    """Median seconds per request of each way, plain and streamed, taking turns per request."""
    import httpx

    with _servers() as urls, ExitStack() as stack:
        callers = {}
        for name, url in urls.items():
            client = stack.enter_context(httpx.Client(timeout=30))
            for stream in (False, True):
                callers[name, stream] = _caller(client, url, stream)
        for call in callers.values():  # warm up connections and code paths
            for _ in range(max(10, calls // 10)):
                call()
        echoed = callers[BPO, False]()
        assert QUESTION + SUFFIX in echoed, echoed  # the BPO proxy really sent the rewrite
        assert QUESTION + SUFFIX not in callers[PLAIN, False]()
        samples: dict[tuple[str, bool], list[float]] = {key: [] for key in callers}
        for _ in range(repeats):
            times: dict[tuple[str, bool], list[float]] = {key: [] for key in callers}
            for _ in range(calls):
                for key, call in callers.items():
                    started = time.perf_counter()
                    call()
                    times[key].append(time.perf_counter() - started)
            for key, values in times.items():
                samples[key].append(statistics.median(values))
    return {key: statistics.median(values) for key, values in samples.items()}


def run(*, calls: int = 300, repeats: int = 5) -> Section:
    times = time_ways(calls=calls, repeats=repeats)
    section = Section(
        title="Proxy overhead",
        setup=(
            f"{calls} sequential chat requests per way and kind (plain, streamed) in each of "
            f"{repeats} repeats; the ways take turns request by request; median per repeat, "
            "median of the repeats. The upstream (the scripted OpenAI-compatible server, echoing "
            "the prompt) and both proxies (uvicorn) each run in their own process on loopback. "
            "Added latency = a proxy's time − the direct time. The BPO proxy's optimizer is "
            "`BPOOptimizer(CallableBackend(async fn), cache_size=0)` with an instant fn "
            f"returning `prompt + {SUFFIX!r}`."
        ),
        header=("Way", "Plain request", "Streamed request", "Added (plain)", "Added (streamed)"),
    )
    for name in (DIRECT, PLAIN, BPO):
        plain, streamed = times[name, False], times[name, True]
        added = "—" if name == DIRECT else fmt_s(plain - times[DIRECT, False])
        added_streamed = "—" if name == DIRECT else fmt_s(streamed - times[DIRECT, True])
        section.rows.append((name, fmt_s(plain), fmt_s(streamed), added, added_streamed))
    for label, stream in (("plain", False), ("streamed", True)):
        base = times[PLAIN, stream] - times[DIRECT, stream]
        extra = times[BPO, stream] - times[DIRECT, stream]
        ratio = extra / base if base > 0 else float("inf")
        section.figures.append(
            Figure(
                f"BPO proxy added latency / plain proxy added latency ({label} requests)",
                ratio,
                "x",
                f"≤ {TARGET_RATIO}x",
                ratio <= TARGET_RATIO,
            )
        )
    section.notes.append(
        "Both proxies share everything but the rewrite step: the same app, middleware, "
        "connection pool and streaming response; the plain one forwards the request's bytes "
        "without reading them."
    )
    return section


if __name__ == "__main__":  # python -m benchmarks.proxy_overhead [calls] [repeats]
    import sys

    sizes = [int(arg) for arg in sys.argv[1:3]]
    print(run(**dict(zip(("calls", "repeats"), sizes, strict=False))).to_markdown())
