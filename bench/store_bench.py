"""Store benchmark: what each store costs a cloud turn, what a second instance on Redis buys, and how an
instance's memory grows with the ledger.

Run: ``.venv/bin/python bench/store_bench.py`` (about 2 minutes; ``--quick`` for well under one). It
needs ``redis-server`` on the PATH and uses loopback only. A measurement, not a test: it prints
figures and says whether its targets (the README lists them) are met.

How (the method of ``bench/proxy_bench.py``, whose pieces it reuses):

* **Δ against direct.** The same client sends the same ~20 KB body to the fast fake upstream
  directly and through ``trooper serve`` on each store — ``memory``, SQLite (a file in a temporary
  directory) and Redis (a ``redis-server`` of its own with ``appendonly yes``, ``appendfsync
  everysec``) — in interleaved rounds whose order rotates; figures are medians over rounds of each
  round's difference from direct. Redis minus SQLite is the median of the per-round differences.
* **Pinned.** On two CPUs every Trooper runs on the first, the upstream, Redis and the load
  generator on the second, so a Trooper's own cost is not hidden by the load generator's.
* **Two instances.** Two ``trooper serve`` processes on one Redis, one per CPU, behind a client that
  sends its requests to them in turn, against one instance alone, at 16 in flight. On a two-CPU
  machine the load generator, the upstream and Redis then share those CPUs with the instances: their
  CPU time is printed so a saturated client is visible, not mistaken for Trooper's limit. So is what
  makes an instance wait rather than work: the time it was ready to run but waited for a CPU (the
  kernel's run-queue delay), the CPU other processes on the machine took meanwhile, and how often
  and how long its turns waited for a conversation's lock held by the other instance (the store
  logs its counts when it closes). The CPU each request costs the instance and everything else,
  measured with one instance, gives the scale two instances could reach on this machine, idle, if
  CPU were all that limited them: one instance has a CPU of its own, two share every CPU with the
  client, the upstream and Redis. That ceiling is what the measured scale is to be read against.
* **Memory as the ledger grows.** Another writer appends ledger records to Redis (as other
  instances' local turns would) up to 1,000,000 fingerprints; one instance serving cloud turns
  picks them up before each request; its RSS is read from ``/proc`` at each step. Two mixes: one
  like real local turns (span fingerprints of replies and prompts, with a few positional keys), and
  positional keys only (the worst case for the index's memory).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.proxy_bench import (  # noqa: E402
    API_KEY,
    LoadGenerator,
    Rounds,
    Scenario,
    cpu_seconds,
    free_port,
    median,
    pct,
    print_readme_table,
    prompt_body,
    rss_kib,
    spawn,
    stop,
    tree_state,
    wait_ready,
)

TARGET_REDIS_OVER_SQLITE_MS: Final = 0.3
TARGET_SCALE: Final = 1.6
TARGET_RSS_MIB: Final = 10.0
STORES: Final = ("memory", "sqlite", "redis")


def start_redis(workdir: Path, cpus: set[int] | None) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("store_bench: redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    directory = workdir / f"redis-{port}"
    directory.mkdir()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
    argv += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
    proc = spawn(argv, os.environ, cpus, workdir / f"redis-{port}.log")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            import socket

            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        time.sleep(0.02)
    raise RuntimeError("redis-server did not start")


def start_trooper(
    store: str, upstream: str, workdir: Path, cpus: set[int] | None, name: str
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "TROOPER_PORT": str(port),
        "TROOPER_ANTHROPIC_BASE_URL": upstream,
        "TROOPER_OLLAMA_BASE_URL": f"http://127.0.0.1:{free_port()}",
        "TROOPER_OLLAMA_CONTEXT_LENGTH": "8192",
        "TROOPER_STORE": store,
        "TROOPER_SERVER_EPHEMERAL": "1",
        "TROOPER_CONFIG": str(workdir / "absent.toml"),
    }
    proc = spawn([sys.executable, "-m", "trooper", "serve"], env, cpus, workdir / f"trooper-{name}.log")
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc)
    return proc, url


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="trooper-store-bench-") as tmp:
        yield Path(tmp)


def sched_seconds(pid: int) -> tuple[float, float]:
    """Seconds ``pid`` (all its threads) ran, and waited ready to run for a CPU (``/proc/…/schedstat``)."""
    ran = waited = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            run_ns, wait_ns, _ = (task / "schedstat").read_text().split()
            ran, waited = ran + int(run_ns), waited + int(wait_ns)
    return ran / 1e9, waited / 1e9


def machine_seconds() -> tuple[float, float]:
    """CPU seconds the whole machine was busy and its elapsed CPU seconds (``/proc/stat``)."""
    values = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    ticks = os.sysconf("SC_CLK_TCK")
    return (sum(values) - idle) / ticks, sum(values) / ticks


def store_counts(log: Path) -> dict[str, float]:
    """What a Trooper's Redis store counted (its ``redis_store_closed`` line) and the turns it logged."""
    import json

    counts: dict[str, float] = {"turns": 0}
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if event.get("event") == "turn":
                counts["turns"] += 1
            elif event.get("event") == "redis_store_closed":
                counts.update({key: float(event[key]) for key in ("round_trips", "lock_waits", "lock_wait_ms")})
    return counts


def load_line() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


def cpu_sets(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return None, None
    return {cpus[0]}, {cpus[1]}


# ============================================================================ 1: added latency per store


async def measure_stores(
    urls: Mapping[str, str], pids: Mapping[str, int], args: argparse.Namespace
) -> dict[str, Rounds]:
    body = prompt_body(stream=False)
    plans = [
        Scenario("ns1", "non-stream c=1", False, 1, 150 if args.quick else 400),
        Scenario("ns16", "non-stream c=16", False, 16, 600 if args.quick else 2000),
    ]
    results = {plan.key: Rounds() for plan in plans}
    targets = list(urls)
    async with LoadGenerator(urls) as load:
        for plan in plans:  # warm-up round, discarded
            for target in targets:
                await load.run(target, plan, body, n=min(plan.n, 200))
        for number in range(args.rounds):
            order = targets[number % len(targets) :] + targets[: number % len(targets)]
            for plan in plans:
                for target in order:
                    before = cpu_seconds(pids[target]) if target in pids else 0.0
                    batch = await load.run(target, plan, body)
                    rounds = results[plan.key]
                    rounds.add(target, batch)
                    if target in pids:
                        rounds.cpu[target] = rounds.cpu.get(target, 0.0) + cpu_seconds(pids[target]) - before
                        rounds.requests[target] = rounds.requests.get(target, 0) + plan.n
            print(f"  round {number + 1}/{args.rounds} done", flush=True)
    return results


def pair_delta(rounds: Rounds, key: str, a: str, b: str) -> float:
    pairs = zip(rounds.stats[a], rounds.stats[b], strict=False)
    return median([x[key] - y[key] for x, y in pairs])


def start_backends(tmp: Path, cpus: set[int] | None, procs: list[subprocess.Popen[bytes]]) -> tuple[str, str]:
    """The fast upstream and a Redis of the bench's own, added to ``procs`` as they start (the caller
    stops them); returns their URLs."""
    port = free_port()
    upstream = spawn(
        [sys.executable, str(ROOT / "bench" / "proxy_bench.py"), "--serve-upstream", "fast", "--port", str(port)],
        os.environ,
        cpus,
        tmp / "upstream.log",
    )
    procs.append(upstream)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, upstream)
    redis, redis_url = start_redis(tmp, cpus)
    procs.append(redis)
    return url, redis_url


def section_stores(args: argparse.Namespace) -> list[str]:
    trooper_cpus, other_cpus = cpu_sets(not args.no_pin)
    lines: list[str] = []
    with workdir() as tmp:
        procs: list[subprocess.Popen[bytes]] = []
        try:
            upstream_url, redis_url = start_backends(tmp, other_cpus, procs)
            stores = {"memory": "memory", "sqlite": str(tmp / "trooper.sqlite3"), "redis": redis_url}
            urls = {"direct": upstream_url}
            pids: dict[str, int] = {}
            for name, store in stores.items():
                proc, url = start_trooper(store, upstream_url, tmp, trooper_cpus, name)
                procs.append(proc)
                urls[name], pids[name] = url, proc.pid
            print("section 1: added latency and throughput per store ...", flush=True)
            busy_before = machine_seconds()
            results = asyncio.run(measure_stores(urls, pids, args))
            busy_after = machine_seconds()
        finally:
            for proc in reversed(procs):
                stop(proc)
        redis_counts = store_counts(tmp / "trooper-redis.log")
    busy = (busy_after[0] - busy_before[0]) / max(busy_after[1] - busy_before[1], 1e-9) * len(os.sched_getaffinity(0))
    one, many = results["ns1"], results["ns16"]
    print("\n  store    Δ p50 c=1   Δ p99 c=1   Δ p50 c=16   req/s c=16 (direct)   CPU ms/req c=1")
    for name in STORES:
        print(
            f"  {name:<8} {one.delta('p50', name) * 1000:+8.3f} ms {one.delta('p99', name) * 1000:+8.3f} ms "
            f"{many.delta('p50', name) * 1000:+9.3f} ms   {many.med(name, 'rps'):8.0f} "
            f"({many.med('direct', 'rps'):.0f})"
            f"          {one.cpu_ms(name):.2f}"
        )
    extra = pair_delta(one, "p50", "redis", "sqlite") * 1000
    extra16 = pair_delta(many, "p50", "redis", "sqlite") * 1000
    target = TARGET_REDIS_OVER_SQLITE_MS
    met = extra <= target
    print(f"\n  Redis over SQLite, p50 c=1: {extra:+.3f} ms (target ≤ {target} ms: {_verdict(met)})")
    trips = redis_counts.get("round_trips", 0) / max(redis_counts["turns"], 1)
    print(f"  Redis round trips per turn: {trips:.2f}; machine busy {busy:.2f} cores on average; {load_line()}")
    for name in STORES:
        lines.append(
            f"| added latency p50 / p99, c=1, {name} | {one.delta('p50', name) * 1000:+.3f} / "
            f"{one.delta('p99', name) * 1000:+.3f} ms | | |"
        )
    lines.append(
        f"| Redis over SQLite, p50 c=1 / c=16 | {extra:+.3f} / {extra16:+.3f} ms | ≤ {target} ms (c=1) | "
        f"{_verdict(met)} |"
    )
    rps = " / ".join(f"{many.med(name, 'rps'):,.0f}" for name in STORES)
    lines.append(
        f"| throughput c=16, memory / SQLite / Redis (direct {many.med('direct', 'rps'):,.0f}) | {rps} req/s | | |"
    )
    cpu = " / ".join(f"{one.cpu_ms(name):.2f}" for name in STORES)
    lines.append(f"| Trooper CPU per request c=1, memory / SQLite / Redis | {cpu} ms | | |")
    lines.append(f"| Redis round trips per cloud turn (each instance's own count) | {trips:.2f} | | |")
    return lines


# ============================================================================ 2: one and two instances


async def round_robin(urls: Sequence[str], n: int, concurrency: int, body: bytes) -> tuple[float, list[float], int]:
    """``n`` requests, ``concurrency`` in flight, each next request to the next instance in turn."""
    import aiohttp

    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) for _ in urls]
    headers = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01", "content-type": "application/json"}
    latencies: list[float] = []
    errors = 0
    counter = 0
    remaining = n

    async def worker(number: int) -> None:
        nonlocal counter, remaining, errors
        own = {**headers, "x-claude-code-session-id": f"rr-{number}"}
        while remaining > 0:
            remaining -= 1
            target = counter % len(urls)
            counter += 1
            started = time.perf_counter()
            async with sessions[target].post(urls[target] + "/v1/messages", data=body, headers=own) as reply:
                await reply.read()
                errors += reply.status != 200
            latencies.append(time.perf_counter() - started)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        wall = time.perf_counter() - started
    finally:
        for session in sessions:
            await session.close()
    return n / wall, latencies, errors


def section_instances(args: argparse.Namespace) -> list[str]:
    cpus = sorted(os.sched_getaffinity(0))
    first, second = ({cpus[0]}, {cpus[1]}) if len(cpus) >= 2 and not args.no_pin else (None, None)
    n = 1000 if args.quick else 3000
    body = prompt_body(stream=False)
    with workdir() as tmp:
        procs: list[subprocess.Popen[bytes]] = []
        try:
            upstream_url, redis_url = start_backends(tmp, None, procs)
            a, url_a = start_trooper(redis_url, upstream_url, tmp, first, "a")
            b, url_b = start_trooper(redis_url, upstream_url, tmp, second, "b")
            procs += [a, b]
            print("\nsection 2: one and two instances on Redis, c=16, round-robin client ...", flush=True)
            asyncio.run(round_robin([url_a, url_b], 400, 16, body))  # warm-up
            me = os.getpid()
            named = {"client": me, "upstream": procs[0].pid, "redis": procs[1].pid, "a": a.pid, "b": b.pid}
            ones, twos, directs, singles, doubles = [], [], [], [], []
            for _ in range(args.rounds):
                directs.append(asyncio.run(round_robin([upstream_url], n, 16, body))[0])
                for urls, rates, usage in (([url_a], ones, singles), ([url_a, url_b], twos, doubles)):
                    before = {name: sched_seconds(pid) for name, pid in named.items()}
                    machine_before, started = machine_seconds(), time.perf_counter()
                    rates.append(asyncio.run(round_robin(urls, n, 16, body))[0])
                    wall = time.perf_counter() - started
                    machine_after = machine_seconds()
                    after = {name: sched_seconds(pid) for name, pid in named.items()}
                    row = {f"{name} ran": (after[name][0] - before[name][0]) / wall for name in named}
                    row |= {f"{name} waited": (after[name][1] - before[name][1]) / wall for name in named}
                    busy = (machine_after[0] - machine_before[0]) / max(machine_after[1] - machine_before[1], 1e-9)
                    row["others"] = max(0.0, busy * len(cpus) - sum(row[f"{name} ran"] for name in named))
                    row["rate"] = rates[-1]
                    usage.append(row)
        finally:
            for proc in reversed(procs):
                stop(proc)
        counts = {name: store_counts(tmp / f"trooper-{name}.log") for name in ("a", "b")}
    one, two, direct = median(ones), median(twos), median(directs)
    scale = two / one
    shares = {key: statistics.median(row[key] for row in doubles) for key in doubles[0]}
    alone = {key: statistics.median(row[key] for row in singles) for key in singles[0]}
    # CPU per request with one instance: the instance's own, and everything else's (client, upstream,
    # Redis). One instance serves at most one CPU's worth (the rest on the other CPU); two share every
    # CPU with the rest, and neither can use more than its own.
    instance_ms = alone["a ran"] / alone["rate"] * 1000
    rest_ms = sum(alone[f"{name} ran"] for name in ("client", "upstream", "redis")) / alone["rate"] * 1000
    most_one = 1000 / max(instance_ms, rest_ms)
    most_two = min(2 * 1000 / instance_ms, len(cpus) * 1000 / (instance_ms + rest_ms))
    ceiling = most_two / most_one
    met = scale >= TARGET_SCALE
    print(f"  direct (client and upstream alone): {direct:,.0f} req/s")
    print(f"  one instance: {one:,.0f} req/s; two instances: {two:,.0f} req/s; ×{scale:.2f} ({_verdict(met)})")
    print(
        "  cores during the two-instance runs, ran / waited for a CPU: "
        + ", ".join(f"{name} {shares[f'{name} ran']:.2f} / {shares[f'{name} waited']:.2f}" for name in named)
        + f"; other processes {shares['others']:.2f} (of {len(cpus)})"
    )
    print(
        f"  one instance: it ran {alone['a ran']:.2f} cores and waited {alone['a waited']:.2f}; other processes "
        f"{alone['others']:.2f}. CPU per request: the instance {instance_ms:.2f} ms, client + upstream + Redis "
        f"{rest_ms:.2f} ms: on {len(cpus)} idle CPUs two instances reach ×{ceiling:.2f} at most"
    )
    if max(alone["others"], shares["others"]) > 0.1:
        print(
            f"  the machine was shared: other processes took {alone['others']:.2f} / {shares['others']:.2f} "
            "cores during the one / two-instance runs, so these figures understate both"
        )
    for name in ("a", "b"):
        row = counts[name]
        turns = max(row["turns"], 1)
        print(
            f"  instance {name}: {row['turns']:.0f} turns, {row.get('round_trips', 0) / turns:.2f} Redis round trips "
            f"a turn, {row.get('lock_waits', 0):.0f} waits for a lock held elsewhere "
            f"({row.get('lock_wait_ms', 0):.1f} ms in all)"
        )
    print(f"  {load_line()}")
    waits = sum(counts[name].get("lock_waits", 0) for name in ("a", "b"))
    return [
        f"| throughput c=16 on Redis: one / two instances (round-robin client) | {one:,.0f} / {two:,.0f} req/s "
        f"(×{scale:.2f}) | ≥ ×{TARGET_SCALE} | {_verdict(met)} |",
        f"| ... cores busy during the two-instance runs: client {shares['client ran']:.2f}, upstream "
        f"{shares['upstream ran']:.2f}, Redis {shares['redis ran']:.2f}, the two instances "
        f"{shares['a ran'] + shares['b ran']:.2f} (waiting for a CPU {shares['a waited'] + shares['b waited']:.2f}), "
        f"other processes {shares['others']:.2f} (of {len(cpus)}) | | | |",
        f"| ... the most two instances reach on {len(cpus)} idle CPUs at the measured CPU per request "
        f"(instance {instance_ms:.2f} ms, the rest {rest_ms:.2f} ms) | ×{ceiling:.2f} | | |",
        f"| ... turns that waited for a lock held by the other instance | {waits:.0f} | | |",
    ]


# ============================================================================ 3: RSS as the ledger grows


def _records(rng: random.Random, count: int, mix: str) -> list[Any]:
    """About ``count`` fingerprints of ledger records, as local turns would append them."""
    from trooper.ledger import LedgerRecord

    out = []
    made = 0
    while made < count:
        if mix == "positional":
            kind = rng.choice(["prompt", "reply", "seen", "seen.reply", "tool", "blob.produced"])
            size = 50
        elif rng.random() < 0.9:
            kind, size = rng.choice(["span.produced", "span.received"]), 200
        else:
            kind, size = rng.choice(["prompt", "reply", "seen", "tool"]), 4
        values = [rng.getrandbits(64) for _ in range(size)]
        out.append(LedgerRecord.of(kind, values, session=f"s{rng.randrange(1000)}"))  # type: ignore[arg-type]
        made += size
    return out


async def grow(url: str, rng: random.Random, count: int, mix: str) -> int:
    """Append about ``count`` fingerprints to the ledger, as another instance would; returns how many."""
    from trooper.store import RedisStore

    store = RedisStore(url)
    done = 0
    while done < count:
        batch = _records(rng, min(50_000, count - done), mix)
        await store.ledger_append(batch)
        done += sum(len(record) for record in batch)
    await store.close()
    return done


def section_rss(args: argparse.Namespace) -> list[str]:
    steps = (0, 250_000, 500_000, 1_000_000)
    body = prompt_body(stream=False)
    lines: list[str] = []
    for mix in ("turns", "positional"):
        with workdir() as tmp:
            procs: list[subprocess.Popen[bytes]] = []
            try:
                upstream_url, redis_url = start_backends(tmp, None, procs)
                proc, url = start_trooper(redis_url, upstream_url, tmp, None, "rss")
                procs.append(proc)
                asyncio.run(round_robin([url], 2000, 4, body))  # warm: caches, pools, arenas
                rng = random.Random(13)
                rss: list[int] = []
                written = 0
                for step in steps:
                    written += asyncio.run(grow(redis_url, rng, step - written, mix))
                    asyncio.run(round_robin([url], 300, 4, body))  # each request reads what was appended
                    rss.append(rss_kib(proc.pid))
            finally:
                for item in reversed(procs):
                    stop(item)
        growth = (rss[-1] - rss[0]) / 1024
        per = (rss[-1] - rss[0]) * 1024 / steps[-1]
        met = growth < TARGET_RSS_MIB
        print(
            f"\nsection 3: RSS of one instance as the ledger grows ({mix}): "
            + ", ".join(f"{step:,} → {value / 1024:.1f} MiB" for step, value in zip(steps, rss, strict=True))
            + f"; growth {growth:+.1f} MiB ({per:.1f} bytes a fingerprint): {_verdict(met)}"
        )
        label = "like local turns (90 % spans)" if mix == "turns" else "positional keys only"
        lines.append(
            f"| instance RSS, 0 → 1,000,000 ledger fingerprints on Redis, {label} | {rss[0] / 1024:.1f} → "
            f"{rss[-1] / 1024:.1f} MiB ({growth:+.1f} MiB, {per:.0f} B each) | < {TARGET_RSS_MIB:g} MiB | "
            f"{_verdict(met)} |"
        )
    return lines


# ============================================================================ main


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and requests")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5, 2 with --quick)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument(
        "--only", default="stores,instances,rss", help="comma-separated sections: stores, instances, rss"
    )
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 2 if args.quick else 5
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    from trooper.audit import configure_logging

    configure_logging("warning")  # the ledger writer's store in this process logs as it closes
    only = set(args.only.split(","))
    print(
        f"trooper store benchmark — Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
        f"{'quick' if args.quick else 'full'} mode; trooper tree {tree_state()}; {load_line()}",
        flush=True,
    )
    readme: list[str] = []
    if "stores" in only:
        readme += section_stores(args)
    if "instances" in only:
        readme += section_instances(args)
    if "rss" in only:
        readme += section_rss(args)
    print_readme_table(readme)


if __name__ == "__main__":
    _ = pct  # re-exported statistics helpers keep one definition, in proxy_bench
    main()
