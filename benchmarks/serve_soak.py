"""Soak: many clients send ``bpo serve`` a mix of valid and hostile requests for a while.

``bpo serve`` runs in its own process (the real CLI). Each client loops over the request mix below
until the time is up (together the clients send every kind at least once), waiting for each answer
before it sends the next. Hostile requests are the ones a fuzzer or a careless client sends: huge
stop sequences, sampling values at the edge of floating point, broken or deeply nested JSON, bytes
that are not UTF-8, a 1 MB body, a stream left after its first event. What counts: no 5xx, and the
server's memory after the soak back near what it was before (state that grows with what clients
send is a leak).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks._common import Figure, Section, load_prompts
from benchmarks.served import bpo_serve

RSS_TARGET = 0.10
PLATEAU = 0.02
"""Warm-up ends at the first round that grows RSS by at most this fraction."""
HEALTH_P99_TARGET_MS = 50.0
LARGE_CLIENTS = 4


@dataclass(frozen=True)
class Probe:
    """One kind of request in the mix: a name, whether it is valid, and how to send it."""

    name: str
    valid: bool
    method: str
    path: str
    body: bytes | None = None
    stream: bool = False


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


def request_mix(prompt: str) -> list[Probe]:
    """The requests every client cycles through (about half of them hostile)."""
    small = {"max_new_tokens": 8}
    return [
        Probe(
            "generate", True, "POST", "/generate", _json({"inputs": prompt, "parameters": small})
        ),
        Probe("health", True, "GET", "/health"),
        Probe("tokenize", True, "POST", "/tokenize", _json({"inputs": prompt})),
        Probe(
            "chat",
            True,
            "POST",
            "/v1/chat/completions",
            _json(
                {"model": "bpo", "messages": [{"role": "user", "content": prompt}], "max_tokens": 8}
            ),
        ),
        Probe(
            "stream, left after one event",
            True,
            "POST",
            "/generate_stream",
            _json({"inputs": prompt, "parameters": {"max_new_tokens": 32}}),
            stream=True,
        ),
        Probe(
            "long stop sequences",
            False,
            "POST",
            "/generate",
            _json({"inputs": prompt, "parameters": {**small, "stop": ["x" * 20_000] * 4}}),
        ),
        Probe(
            "extreme sampling",
            False,
            "POST",
            "/generate",
            _json(
                {
                    "inputs": prompt,
                    "parameters": {
                        **small,
                        "do_sample": True,
                        "temperature": 1e308,
                        "repetition_penalty": 1e-300,
                        "typical_p": 1e-38,
                    },
                }
            ),
        ),
        Probe("broken JSON", False, "POST", "/generate", b'{"inputs": "a", "parameters": {'),
        Probe("not UTF-8", False, "POST", "/generate", b'{"inputs": "\xff\xfe\xfa"}'),
        Probe("deep nesting", False, "POST", "/generate", b"[" * 50_000 + b"]" * 50_000),
        Probe(
            "1 MB to /tokenize", False, "POST", "/tokenize", _json({"inputs": "word " * 200_000})
        ),
        Probe(
            "1 MB to /generate",
            False,
            "POST",
            "/generate",
            _json({"inputs": "word " * 200_000, "parameters": small}),
        ),
        Probe(
            "negative max_new_tokens",
            False,
            "POST",
            "/generate",
            _json({"inputs": prompt, "parameters": {"max_new_tokens": -1}}),
        ),
    ]


class RssSampler:
    """The peak resident memory of a process and its children (``bpo serve``'s engine runs in
    one), sampled in a thread while it runs."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        import psutil

        self._process = psutil.Process(pid)
        self._interval = interval
        self._stop = threading.Event()
        self.peak = self.now()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> float:
        """The RSS of the process and its children now, in MiB."""
        import psutil

        total = 0
        for process in [self._process, *self._process.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += process.memory_info().rss
        return total / 2**20

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self.now())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def _client(
    url: str,
    probes: list[Probe],
    offset: int,
    until: float,
    record: Callable[..., None],
    *,
    at_least: int,
) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        index = offset
        while time.monotonic() < until or index - offset < at_least:
            probe = probes[index % len(probes)]
            index += 1
            headers = {"content-type": "application/json"} if probe.body is not None else {}
            started = time.perf_counter()
            try:
                if probe.stream:
                    request = client.build_request(
                        probe.method, probe.path, content=probe.body, headers=headers
                    )
                    response = await client.send(request, stream=True)
                    async for _ in response.aiter_lines():
                        break  # leave mid-stream
                    await response.aclose()
                else:
                    response = await client.request(
                        probe.method, probe.path, content=probe.body, headers=headers
                    )
                record(probe, response.status_code, time.perf_counter() - started)
            except httpx.HTTPError as error:  # a reset connection counts as a server failure
                record(probe, f"error: {type(error).__name__}", time.perf_counter() - started)


SoakResult = tuple[Counter[tuple[str, int | str]], dict[str, list[float]]]


LARGE = ("1 MB to /tokenize", "1 MB to /generate")
"""The kinds of request of the large-input phase."""


async def _soak(url: str, clients: int, seconds: float, kinds: tuple[str, ...] = ()) -> SoakResult:
    """How often each kind of request got each status, and latencies by kind (every kind of the
    mix, or only ``kinds``)."""
    probes = [p for p in request_mix(load_prompts(1)[0]) if not kinds or p.name in kinds]
    statuses: Counter[tuple[str, int | str]] = Counter()
    latencies: dict[str, list[float]] = defaultdict(list)

    def record(probe: Probe, status: int | str, elapsed: float) -> None:
        statuses[probe.name, status] += 1
        latencies[probe.name].append(elapsed)

    until = time.monotonic() + seconds
    share = -(-len(probes) // clients)  # each client starts at its own share: all kinds are sent
    await asyncio.gather(
        *(_client(url, probes, i * share, until, record, at_least=share) for i in range(clients))
    )
    return statuses, latencies


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else values[0]


def _is_failure(status: int | str) -> bool:
    """A 5xx, or no answer at all (``status`` is then the client's error)."""
    return not isinstance(status, int) or status >= 500


HEALTH_PROBER = r"""
import json, sys, time, urllib.request
url, seconds = sys.argv[1], float(sys.argv[2])
latencies, until = [], time.monotonic() + seconds
while time.monotonic() < until:
    started = time.perf_counter()
    with urllib.request.urlopen(url + "/health", timeout=60) as response:
        response.read()
    latencies.append(time.perf_counter() - started)
    time.sleep(0.02)
print(json.dumps(latencies))
"""


def _soak_with_health_prober(
    url: str, clients: int, seconds: float, kinds: tuple[str, ...] = ()
) -> tuple[SoakResult, list[float]]:
    """A soak while a process of its own times ``/health`` every 20 ms (the clients' own event
    loop, busy with 64 connections, would otherwise count in the server's figure)."""
    import subprocess
    import sys

    prober = subprocess.Popen(
        [sys.executable, "-c", HEALTH_PROBER, url, str(max(1.0, seconds - 1.0))],
        stdout=subprocess.PIPE,
        text=True,
    )
    result = asyncio.run(_soak(url, clients, seconds, kinds))
    output, _ = prober.communicate(timeout=120)
    return result, [float(t) for t in json.loads(output)]


FILL_BATCH = 16
FILL_CHARS = 2000
FILL_PROMPTS = 64
"""Real prompts joined for one long fill text (then cut to ``FILL_CHARS``)."""


async def _fill_round(url: str, texts: list[str]) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        body = {"parameters": {"max_new_tokens": 8}}
        posts = (client.post("/generate", json={"inputs": t, **body}) for t in texts)
        for response in await asyncio.gather(*posts):
            response.raise_for_status()  # a refused fill would leave the cache unfilled unseen


def _warm_up(url: str, rss: RssSampler, clients: int, seconds: float, rounds: int) -> list[float]:
    """RSS after each warm-up round, until the server's stops growing.

    The engine's paged KV cache (a fixed budget) becomes resident block by block as requests use
    fresh blocks, and the mix's short requests on one prompt use few. So rounds of 16 long,
    distinct prompts fill it first; then rounds of the mix run until one grows RSS by at most
    ``PLATEAU``.
    """
    sizes = [rss.now()]

    def until_flat(one_round: Callable[[int], None]) -> None:
        for index in range(rounds):
            one_round(index)
            sizes.append(rss.now())
            if sizes[-1] - sizes[-2] <= PLATEAU * sizes[-2]:
                return

    prompts = load_prompts(FILL_BATCH * rounds + FILL_PROMPTS)

    def fill(index: int) -> None:
        starts = range(index * FILL_BATCH, (index + 1) * FILL_BATCH)
        texts = [" ".join(prompts[i : i + FILL_PROMPTS])[:FILL_CHARS] for i in starts]
        asyncio.run(_fill_round(url, texts))

    until_flat(fill)
    until_flat(lambda _: asyncio.run(_soak(url, clients, seconds)))
    return sizes


def run(
    *,
    model: str | None,
    clients: int = 64,
    seconds: float = 60.0,
    settle: float = 5.0,
    warm_up_rounds: int = 12,
) -> Section:
    with bpo_serve(model, max_batch_size=16) as server, RssSampler(server.pid) as rss:
        warm_up = _warm_up(server.url, rss, clients, seconds / 3, warm_up_rounds)
        time.sleep(settle)
        before = rss.now()
        (statuses, by_kind), health = _soak_with_health_prober(server.url, clients, seconds)
        time.sleep(settle)
        after = rss.now()
        peak = rss.peak
        (large, _), large_health = _soak_with_health_prober(
            server.url, LARGE_CLIENTS, seconds / 3, LARGE
        )
    failures = sum(n for (_, status), n in statuses.items() if _is_failure(status))
    latencies = [t for values in by_kind.values() for t in values]
    p50, p99, health_p99 = statistics.median(latencies), _p99(latencies), _p99(health)
    large_p99 = _p99(large_health)
    failures += sum(n for (_, status), n in large.items() if _is_failure(status))
    growth = (after - before) / before
    section = Section(
        title="Soak: valid and hostile requests against bpo serve",
        setup=(
            f"`bpo serve --max-batch-size 16` in its own process; {clients} clients for "
            f"{seconds:g} s, each cycling through {len(request_mix('x'))} kinds of request "
            "(5 valid, the rest hostile) and waiting for each answer, while a process of its own "
            "times `/health` every 20 ms. RSS of the server process and its engine process "
            f"after a warm-up (rounds of {FILL_BATCH} long distinct prompts that fill the KV "
            f"cache, then {seconds / 3:g}-second rounds of the same mix, each until a round grows "
            f"RSS by at most {PLATEAU:.0%}) and {settle:g} s of rest, its peak, and after the soak "
            f"and {settle:g} s of rest."
        ),
        header=("Request: status", "Count"),
    )
    section.rows = [
        (f"{kind}: {status}", str(n))
        for (kind, status), n in sorted(statuses.items(), key=lambda item: str(item[0]))
    ]
    section.notes = [
        f"{len(latencies)} requests; latency p50 {p50 * 1e3:.0f} ms, p99 {p99 * 1e3:.0f} ms.",
        f"RSS before {before:.0f} MiB, peak {peak:.0f} MiB, after {after:.0f} MiB.",
        f"Warm-up: {len(warm_up) - 1} rounds, RSS "
        + " → ".join(f"{size:.0f}" for size in warm_up)
        + " MiB.",
        f"`/health` from its own process: {len(health)} requests, p50 "
        f"{statistics.median(health) * 1e3:.1f} ms, p99 {health_p99 * 1e3:.1f} ms.",
        f"Large-input phase: {sum(large.values())} requests of 1 MB from {LARGE_CLIENTS} "
        f"clients in {seconds / 3:g} s; `/health` meanwhile {len(large_health)} requests, p50 "
        f"{statistics.median(large_health) * 1e3:.1f} ms, p99 {large_p99 * 1e3:.1f} ms.",
        "Latency p50 by kind: "
        + ", ".join(
            f"{kind} {statistics.median(values) * 1e3:.0f} ms"
            for kind, values in sorted(by_kind.items())
        )
        + ".",
    ]
    section.figures = [
        Figure("5xx answers or broken connections", failures, "", "0", failures == 0),
        Figure("Latency p99, every request", p99 * 1e3, "ms", "report", None),
        Figure(
            "`/health` latency p99 while 1 MB requests are handled",
            large_p99 * 1e3,
            "ms",
            f"< {HEALTH_P99_TARGET_MS:g} ms",
            large_p99 * 1e3 < HEALTH_P99_TARGET_MS,
        ),
        Figure("`/health` latency p99 under the whole mix", health_p99 * 1e3, "ms", "report", None),
        Figure("Peak RSS during the soak", peak, "MiB", "report", None),
        Figure(
            "RSS after the soak vs before",
            growth * 100,
            "%",
            f"≤ {RSS_TARGET:.0%}",
            growth <= RSS_TARGET,
        ),
    ]
    return section
