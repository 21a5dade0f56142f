"""Several ``trooper serve`` processes on one real Redis: the promise holds across instances.

Three instances share one ``redis-server`` (AOF on), the package's fake cloud and fake Ollama on
loopback sockets, and are driven with httpx as a load balancer would spread a client's requests:

* **shared health** — a 429 one instance sees sends the others local without a doomed cloud call,
  and one probe brings them all back;
* **the lock** — requests of one conversation arriving at two instances at once run one after the
  other, and a holder killed mid-turn blocks the conversation no longer than ``store.lock_ttl``;
* **Redis down, hung or flapping** — every request gets an answer within its bound (a 503 in
  Anthropic's shape when the ledger cannot be checked), nothing is sent to the cloud unchecked, no
  forced-local turn runs unrecorded, ``/`` stays up, ``/trooper/health`` says why, and service
  resumes when Redis does — with everything it acknowledged before (AOF).

The processes are started once for the module: each start costs a second or two.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from tests.privacy_kit import block_texts_of, canary, fold, leaked, read_deltas, reformat
from tests.test_redis_server import RedisServer, TrooperProcess
from trooper.testing import FakeAnthropic, FakeOllama
from trooper.testing import fake_anthropic as cloud_script
from trooper.testing import fake_ollama as local_script

pytestmark = pytest.mark.timeout(120)

MODEL = "claude-sonnet-4-6"
KEY = {"x-api-key": "sk-ant-test-0000", "anthropic-version": "2023-06-01"}
#: Each instance's bound on a Redis call and its conversation locks' lease, short for the tests.
REDIS_TIMEOUT = 0.5
LOCK_TTL = 1.0
PASSWORD = "pw-4f1e9a0c"


class Cluster:
    def __init__(self, redis: RedisServer, instances: list[TrooperProcess]) -> None:
        self.redis = redis
        self.instances = instances

    def __getitem__(self, index: int) -> TrooperProcess:
        instance = self.instances[index]
        if not instance.ready():
            instance.wait() if instance.process is not None and instance.process.poll() is None else instance.start()
        return instance


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, _cloud_server: FakeAnthropic, _local_server: FakeOllama
) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("cluster")
    redis = RedisServer(workdir / "redis", password=PASSWORD).start()
    settings = {"store_redis_timeout": str(REDIS_TIMEOUT), "store_lock_ttl": str(LOCK_TTL), "redis_password": PASSWORD}
    instances = [TrooperProcess(_cloud_server.url, _local_server.url, redis.url, workdir, **settings) for _ in range(3)]
    for instance in instances:
        instance.spawn()
    for instance in instances:
        instance.wait()
    yield Cluster(redis, instances)
    for instance in instances:
        instance.stop()
    redis.stop()


def post(instance: TrooperProcess, session: str, messages: list[dict[str, Any]], **body: Any) -> httpx.Response:
    payload = {"model": MODEL, "max_tokens": 64, "messages": messages, **body}
    return httpx.post(
        f"{instance.url}/v1/messages", json=payload, headers={**KEY, "X-Trooper-Session": session}, timeout=30
    )


def cloud_requests(fake: FakeAnthropic, path: str = "/v1/messages") -> int:
    return sum(1 for request in fake.requests if request.path == path)


def _with_body(fake: FakeAnthropic) -> int:
    """Requests that carried content (not a start-up check's ``GET /v1/models``)."""
    return sum(1 for request in fake.requests if request.body)


def test_a_429_seen_by_one_instance_sends_the_others_local_and_one_probe_recovers_all(
    cluster: Cluster, fake_cloud: FakeAnthropic, fake_local: FakeOllama
) -> None:
    fake_cloud.enqueue(cloud_script.rate_limited(retry_after=1))
    first = post(cluster[0], "health-a", [{"role": "user", "content": "hello"}])
    assert (first.headers["x-trooper-route"], first.headers["x-trooper-reason"]) == ("local", "quota")
    sent = cloud_requests(fake_cloud)
    for index in (1, 2):
        other = post(cluster[index], f"health-{index}", [{"role": "user", "content": "hello"}])
        assert (other.headers["x-trooper-route"], other.headers["x-trooper-reason"]) == ("local", "quota")
    assert cloud_requests(fake_cloud) == sent  # no doomed call from the other instances
    time.sleep(1.2)  # the retry time passes
    back = post(cluster[1], "health-b", [{"role": "user", "content": "hello again"}])
    assert back.headers["x-trooper-route"] == "cloud"
    for index in (0, 2):
        assert post(cluster[index], f"health-{index}", [{"role": "user", "content": "and you?"}]).headers[
            "x-trooper-route"
        ] == ("cloud")
    assert cloud_requests(fake_cloud, "/v1/messages/count_tokens") == 1  # one probe recovered them all


def test_one_conversation_on_two_instances_at_once_runs_one_turn_at_a_time(
    cluster: Cluster, fake_local: FakeOllama
) -> None:
    def local_reply() -> local_script.Reply:
        return local_script.Reply(text="one two three", headers_delay=0.4)

    def both(sessions: tuple[str, str]) -> list[float]:
        fake_local.enqueue(local_reply(), local_reply())
        ended: list[float] = []
        a, b = cluster[0], cluster[1]

        def send(instance: TrooperProcess, session: str) -> None:
            reply = post(instance, session, [{"role": "user", "content": "::local count"}])
            assert reply.status_code == 200 and reply.headers["x-trooper-route"] == "local"
            ended.append(time.monotonic())

        started = time.monotonic()
        workers = [
            threading.Thread(target=send, args=(a, sessions[0])),
            threading.Thread(target=send, args=(b, sessions[1])),
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(30)
        return sorted(moment - started for moment in ended)

    both(("lock-warm-1", "lock-warm-2"))  # each instance's first local turn warms its caches
    apart = both(("lock-x", "lock-y"))  # two conversations: side by side
    together = both(("lock-z", "lock-z"))  # one conversation: the second local call starts after the first
    assert apart[1] - apart[0] < 0.3
    assert together[1] - together[0] > 0.35


def _stream_some(instance: TrooperProcess, session: str, history: list[dict[str, Any]], deltas: int) -> str:
    body = {"model": MODEL, "max_tokens": 512, "stream": True, "messages": history}
    client = httpx.Client(timeout=30)
    with client.stream(
        "POST", f"{instance.url}/v1/messages", json=body, headers={**KEY, "X-Trooper-Session": session}
    ) as response:
        return read_deltas(response.iter_lines(), deltas)


def test_a_holder_killed_mid_stream_blocks_its_conversation_no_longer_than_the_lock_ttl(
    cluster: Cluster, fake_cloud: FakeAnthropic, fake_local: FakeOllama
) -> None:
    words = [canary(f"K{n}") for n in range(40)]
    fake_local.enqueue(local_script.Reply(text=" ".join(words), delay=0.05))
    history: list[dict[str, Any]] = [{"role": "user", "content": "::local tell me everything"}]
    holder = cluster[2]
    partial = _stream_some(holder, "killed", history, deltas=5)
    holder.kill()  # mid-stream, lock held, no chance to release it
    holder.spawn()  # back in the background, for later tests
    got = [word for word in words if word in partial]
    assert got
    history += [
        {"role": "assistant", "content": partial},
        {"role": "user", "content": "[Request interrupted by user] go on"},
    ]
    started = time.monotonic()
    reply = post(cluster[0], "killed", history)
    waited = time.monotonic() - started
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-trooper-route"] == "cloud"
    assert waited < LOCK_TTL + 1.5
    assert b"go on" in fake_cloud.received_bytes()
    assert leaked(fake_cloud, words) == []


def test_redis_hung_down_or_flapping_refuses_in_time_and_sends_nothing_unchecked(
    cluster: Cluster, fake_cloud: FakeAnthropic, fake_local: FakeOllama
) -> None:
    a, b = cluster[0], cluster[1]
    secret = canary("R")
    fake_local.enqueue(local_script.Reply(text=f"kept local {secret}"))
    history: list[dict[str, Any]] = [{"role": "user", "content": f"::local remember {canary('RP')}"}]
    first = post(a, "outage", history)
    assert first.headers["x-trooper-route"] == "local"
    history.append({"role": "assistant", "content": first.json()["content"]})

    def refused_in_time(instance: TrooperProcess, text: str) -> None:
        sent, asked = _with_body(fake_cloud), len(fake_local.chat_requests())
        started = time.monotonic()
        reply = post(instance, "outage", [*history, {"role": "user", "content": text}])
        assert time.monotonic() - started < REDIS_TIMEOUT * 3 + 1
        assert reply.status_code == 503, reply.text
        error = reply.json()
        assert error["type"] == "error" and error["error"]["type"] == "api_error"
        assert "refused" in error["error"]["message"]
        assert _with_body(fake_cloud) == sent  # nothing unchecked reached the cloud
        assert len(fake_local.chat_requests()) == asked  # no local turn ran unrecorded
        assert httpx.get(f"{instance.url}/", timeout=5).status_code == 200  # liveness stays up
        health = httpx.get(f"{instance.url}/trooper/health", timeout=REDIS_TIMEOUT * 4 + 5)
        assert health.status_code == 200  # the report answers in time and says why
        report = health.json()
        assert report["status"] == "degraded"
        assert report["store"]["ok"] is False and report["store"]["error"] == "StoreUnavailable"
        assert "redis" in report["store"]["reason"].lower()
        assert report["cloud"]["upstreams"] is None or isinstance(report["cloud"]["upstreams"], dict)

    cluster.redis.pause()  # hung: connections open, nothing answers
    try:
        refused_in_time(a, "a cloud question")
        refused_in_time(b, "::local a local question")
    finally:
        cluster.redis.resume()
    cluster.redis.kill()  # down: connections refused
    refused_in_time(b, "a cloud question")
    refused_in_time(a, "::local a local question")
    cluster.redis.start()  # back, with its append-only file
    again = post(b, "outage", [*history, {"role": "user", "content": "is it back?"}])
    assert again.status_code == 200 and again.headers["x-trooper-route"] == "cloud"
    pasted = post(a, "another", [{"role": "user", "content": f"what is {secret}?"}])
    assert pasted.status_code == 403  # the ledger written before the restart is all there

    # Flapping: Redis stops and resumes every 0.2 s while requests keep coming.
    answers: list[int] = []
    slowest = 0.0
    stop = threading.Event()

    def flap() -> None:
        while not stop.is_set():
            cluster.redis.pause()
            time.sleep(0.2)
            cluster.redis.resume()
            time.sleep(0.2)

    flapper = threading.Thread(target=flap)
    flapper.start()
    try:
        for n in range(6):
            started = time.monotonic()
            reply = post((a, b)[n % 2], "outage", [*history, {"role": "user", "content": f"flap {n}"}])
            slowest = max(slowest, time.monotonic() - started)
            answers.append(reply.status_code)
    finally:
        stop.set()
        flapper.join(10)
        cluster.redis.resume()
    assert set(answers) <= {200, 503}
    assert slowest < REDIS_TIMEOUT * 4 + 1
    assert post(a, "outage", [*history, {"role": "user", "content": "steady"}]).status_code == 200
    assert leaked(fake_cloud, [secret]) == []


def test_the_password_never_reached_a_log(cluster: Cluster) -> None:
    """The cluster's Redis wants a password (``TROOPER_REDIS_PASSWORD``): by now every instance has
    served, failed over outages and restarted, and logged all of it."""
    for instance in cluster.instances:
        assert PASSWORD not in instance.log.read_text()


# ------------------------------------------------------------------ the privacy machine across processes


class ProcessPrivacyMachine(RuleBasedStateMachine):
    """One conversation whose requests a load balancer spreads over the cluster's instances, while
    instances are killed (mid-stream too) and Redis restarts from its append-only file.

    Safety after every step: no canary of a local turn in anything the cloud received. Liveness after
    every cloud turn: the cloud received that turn's prompt and the cloud history before it.
    """

    cluster: Cluster
    cloud: FakeAnthropic
    local: FakeOllama

    def __init__(self) -> None:
        super().__init__()
        self.session = "m-" + canary("")[6:]
        self.history: list[dict[str, Any]] = []
        self.cloud_texts: list[str] = []
        self.secrets: list[str] = []
        self.cloud_turn(0)

    def pick(self, index: int) -> TrooperProcess:
        """The instance ``index`` if it is up, else the next one that is (a load balancer's choice)."""
        for step in range(len(self.cluster.instances)):
            instance = self.cluster.instances[(index + step) % len(self.cluster.instances)]
            if instance.ready():
                return instance
        return self.cluster[index % len(self.cluster.instances)]

    @rule(index=st.integers(0, 2))
    def cloud_turn(self, index: int) -> None:
        prompt, answer = f"cloud question {canary('PC')}", f"cloud answer {canary('PA')}"
        self.history.append({"role": "user", "content": prompt})
        self.cloud.enqueue(cloud_script.text(answer))
        reply = post(self.pick(index), self.session, self.history)
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-trooper-route"] == "cloud"
        # The history may have been re-formatted (blocks split, spaces or Unicode forms changed): look
        # for each text's last word in the folded text the cloud got, blocks joined.
        body = self.cloud.last_json("/v1/messages")
        received = fold("".join(text for message in body["messages"] for text in block_texts_of(message)))
        for text in [*self.cloud_texts[-2:], prompt]:
            assert fold(text.split()[-1]) in received.replace(" ", ""), "cloud content did not reach the cloud"
        self.cloud_texts += [prompt, answer]
        self.history.append({"role": "assistant", "content": reply.json()["content"]})

    @rule(index=st.integers(0, 2), stream=st.booleans())
    def local_turn(self, index: int, stream: bool) -> None:
        prompt, answer = canary("LP"), canary("LA")
        self.secrets += [prompt, answer]
        self.local.enqueue(local_script.Reply(text=f"local answer {answer}"))
        self.history.append({"role": "user", "content": f"::local {prompt}"})
        if stream:
            text = _stream_some(self.pick(index), self.session, self.history, deltas=1000)
            self.history.append({"role": "assistant", "content": text})
        else:
            reply = post(self.pick(index), self.session, self.history)
            assert reply.headers["x-trooper-route"] == "local"
            self.history.append({"role": "assistant", "content": reply.json()["content"]})

    @rule(index=st.integers(0, 2), deltas=st.integers(1, 4), kill=st.booleans())
    def cut_local_stream(self, index: int, deltas: int, kill: bool) -> None:
        """The client hangs up mid-stream, or the instance serving it is killed (``kill -9``)."""
        words = [canary("CW") for _ in range(8)]
        self.local.enqueue(local_script.Reply(text=" ".join(words), delay=0.02))
        self.history.append({"role": "user", "content": f"::local tell me {canary('CP')}"})
        self.secrets.append(self.history[-1]["content"].split()[-1])
        instance = self.pick(index)
        partial = _stream_some(instance, self.session, self.history, deltas=deltas)
        if kill:
            instance.kill()
            instance.spawn()  # it comes back while the others serve
        self.secrets += [word for word in words if word in partial]
        self.history += [
            {"role": "assistant", "content": partial or "..."},
            {"role": "user", "content": "[Request interrupted by user]"},
        ]
        self.cloud_turn(index + 1)

    @rule()
    def redis_restarts(self) -> None:
        self.cluster.redis.restart()

    @rule(kind=st.sampled_from(["blocks", "whitespace", "smart_quotes", "split_text"]), seed=st.integers(0, 99))
    def reformat_history(self, kind: str, seed: int) -> None:
        self.history = reformat(self.history, kind, random.Random(seed))

    @invariant()
    def no_local_content_reached_the_cloud(self) -> None:
        # Each canary is new when it is planted, so only requests sent since the last look can hold it.
        checked = getattr(self, "checked", 0)
        assert leaked(self.cloud, self.secrets, skip=range(checked)) == []
        self.checked = len(self.cloud.requests)


@pytest.mark.timeout(300)
def test_the_privacy_machine_holds_across_instances_kills_and_redis_restarts(
    cluster: Cluster, fake_cloud: FakeAnthropic, fake_local: FakeOllama
) -> None:
    ProcessPrivacyMachine.cluster, ProcessPrivacyMachine.cloud, ProcessPrivacyMachine.local = (
        cluster,
        fake_cloud,
        fake_local,
    )
    run_state_machine_as_test(
        ProcessPrivacyMachine,
        settings=settings(
            max_examples=2,
            stateful_step_count=8,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
