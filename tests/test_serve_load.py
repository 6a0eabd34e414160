"""A bounded load test of `mlflow models serve` on a loopback port.

The TF-IDF model (the fastest real text -> label model) is registered and served on
127.0.0.1. Eight client threads send REQUESTS requests between them (one malformed request in
every MALFORMED_EVERY) and stop by themselves when done or at the time limit. Every valid
request must be answered 200 with a label, every malformed one 4xx, and the server must still
answer afterwards. The p50/p99 latencies of the valid requests are printed, not asserted.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest
import requests

from tests.helpers import LABELS
from tests.model_server import serving

REQUESTS = 2000
CLIENTS = 8
MALFORMED_EVERY = 20
TIME_LIMIT_S = 120
TEXTS = [
    "i feel so happy today",
    "this waiting makes me anxious",
    "i miss her more than i can say",
    "how dare they cancel it again",
    "i never expected to win anything",
    "you make every day better",
]
JSON = {"Content-Type": "application/json"}

# (what is wrong, body, headers): each must get a 4xx, and the server must keep serving.
MALFORMED = [
    ("not JSON", b"{not json", JSON),
    ("no payload key", json.dumps({"texts": ["hi"]}).encode(), JSON),
    ("wrong column", json.dumps({"dataframe_records": [{"sentence": "hi"}]}).encode(), JSON),
    ("text not a string", json.dumps({"dataframe_records": [{"text": 42}]}).encode(), JSON),
    ("unsupported content type", b"hello", {"Content-Type": "application/x-unknown"}),
    ("empty body", b"", JSON),
]


@dataclass
class Tally:
    """What the clients saw, shared between threads under a lock."""

    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    malformed: dict[str, list[int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture(scope="module")
def served(
    registered_tfidf: tuple[str, str], tracking_uri: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Serve the session's registered TF-IDF model (version 1) on 127.0.0.1; yield the base URL."""
    name, _ = registered_tfidf
    workdir = tmp_path_factory.mktemp("serve-load")
    with serving(f"models:/{name}/1", tracking_uri, workdir) as url:
        yield url


def client(url: str, numbers: Iterator[int], tally: Tally, deadline: float) -> None:
    """Take request numbers until they run out or the time is up; record what came back."""
    with requests.Session() as session:
        for number in numbers:
            if time.monotonic() > deadline:
                return
            if number % MALFORMED_EVERY == MALFORMED_EVERY - 1:
                what, body, headers = MALFORMED[(number // MALFORMED_EVERY) % len(MALFORMED)]
                status = session.post(f"{url}/invocations", data=body, headers=headers, timeout=30).status_code
                with tally.lock:
                    tally.malformed.setdefault(what, []).append(status)
                continue
            payload = {"dataframe_records": [{"text": TEXTS[number % len(TEXTS)]}]}
            started = time.perf_counter()
            try:
                response = session.post(f"{url}/invocations", json=payload, timeout=30)
                elapsed = time.perf_counter() - started
                ok = response.status_code == 200 and response.json()["predictions"][0]["label"] in LABELS
                problem = "" if ok else f"{response.status_code}: {response.text[:200]}"
            except (requests.RequestException, ValueError, KeyError, IndexError) as error:
                elapsed, problem = time.perf_counter() - started, f"{type(error).__name__}: {error}"
            with tally.lock:
                if problem:
                    tally.errors.append(problem)
                else:
                    tally.latencies.append(elapsed)


@pytest.mark.slow
def test_the_server_answers_every_valid_request_and_refuses_malformed_ones(
    served: str, capsys: pytest.CaptureFixture
) -> None:
    shared = _Locked(iter(range(REQUESTS)))
    tally = Tally()
    deadline = time.monotonic() + TIME_LIMIT_S
    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(served, shared, tally, deadline)) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIME_LIMIT_S + 60)
    seconds = time.perf_counter() - started

    answered = len(tally.latencies) + len(tally.errors) + sum(map(len, tally.malformed.values()))
    p50, p99 = (np.percentile(tally.latencies, q) * 1000 for q in (50, 99))
    with capsys.disabled():
        print(
            f"\nserve load: {answered} requests ({len(tally.latencies)} valid) from {CLIENTS} clients in "
            f"{seconds:.1f} s ({answered / seconds:.0f}/s); valid p50 {p50:.1f} ms, p99 {p99:.1f} ms; "
            f"malformed answered { {what: sorted(set(s)) for what, s in tally.malformed.items()} }"
        )
    assert not any(thread.is_alive() for thread in threads)
    assert answered == REQUESTS, f"only {answered} of {REQUESTS} requests within {TIME_LIMIT_S} s"
    assert tally.errors == []
    assert set(tally.malformed) == {what for what, _, _ in MALFORMED}
    for what, statuses in tally.malformed.items():
        assert all(400 <= status < 500 for status in statuses), (what, statuses)
    # Still serving afterwards.
    assert requests.get(f"{served}/ping", timeout=10).status_code == 200
    after = requests.post(f"{served}/invocations", json={"inputs": TEXTS}, timeout=30)
    assert after.status_code == 200 and len(after.json()["predictions"]) == len(TEXTS)


class _Locked:
    """An iterator that several threads can share."""

    def __init__(self, numbers: Iterator[int]) -> None:
        self._numbers = numbers
        self._lock = threading.Lock()

    def __iter__(self) -> _Locked:
        return self

    def __next__(self) -> int:
        with self._lock:
            return next(self._numbers)
