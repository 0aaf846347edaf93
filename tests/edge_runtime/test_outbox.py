"""The on-disk outbox: real SQLite files, reopened and crashed for real."""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edgefleet.core.telemetry import Dropped
from edgefleet.edge_runtime.outbox import Entry, Outbox, OutboxError


def render_json(size: int = 0, seen: list | None = None):
    """A render that records the notice it was given and pads the payload to `size` bytes."""

    def render(seq: int, dropped: Dropped) -> bytes:
        if seen is not None:
            seen.append((seq, dropped))
        body = json.dumps({"seq": seq, "dropped": [dropped.windows, dropped.first_seq, dropped.last_seq]}).encode()
        return body + b" " * max(0, size - len(body))

    return render


def test_seq_continues_across_reopen_even_when_drained(tmp_path: Path):
    path = tmp_path / "outbox.sqlite"
    with Outbox(path) as outbox:
        assert [outbox.append("t", render_json()) for _ in range(3)] == [1, 2, 3]
        for seq in (1, 2, 3):
            outbox.ack(seq)
        assert len(outbox) == 0 and outbox.pending_bytes == 0
    with Outbox(path) as outbox:
        assert len(outbox) == 0 and outbox.last_seq == 3
        assert outbox.append("t", render_json()) == 4
    with Outbox(path) as outbox:
        assert [e.seq for e in outbox.peek(10)] == [4]
        assert outbox.append("t", render_json()) == 5


def test_peek_is_oldest_first_and_ack_is_idempotent(tmp_path: Path):
    with Outbox(tmp_path / "outbox.sqlite") as outbox:
        for i in range(5):
            outbox.append(f"topic/{i}", render_json())
        first = outbox.peek(3)
        assert [e.seq for e in first] == [1, 2, 3] and first[0] == Entry(1, "topic/0", render_json()(1, Dropped()))
        assert [e.seq for e in outbox.peek(10, after=3)] == [4, 5]
        before = outbox.pending_bytes
        outbox.ack(2)
        assert outbox.pending_bytes == before - len(first[1].payload)
        outbox.ack(2)  # again: nothing happens
        outbox.ack(99)  # never existed
        outbox.ack_many([])
        assert outbox.pending_bytes == before - len(first[1].payload)
        assert [e.seq for e in outbox.peek(10)] == [1, 3, 4, 5] and len(outbox) == 4


def test_bound_drops_oldest_and_the_next_message_carries_the_exact_notice(tmp_path: Path, caplog):
    path = tmp_path / "outbox.sqlite"
    seen: list[tuple[int, Dropped]] = []
    caplog.set_level(logging.WARNING, logger="edgefleet.edge_runtime.outbox")
    with Outbox(path, max_bytes=1000) as outbox:
        for _ in range(3):
            outbox.append("t", render_json(300, seen))
        assert outbox.pending_bytes == 900 and not caplog.records
        outbox.append("t", render_json(300, seen))  # 1200 > 1000: seq 1 goes
        assert [e.seq for e in outbox.peek(10)] == [2, 3, 4] and outbox.pending_bytes == 900
        assert "dropped the 1 oldest" in caplog.text and outbox.dropped == Dropped(1, 1, 1)
        outbox.append("t", render_json(300, seen))  # seq 5 carries (1, 1-1); seq 2 goes
        assert seen[-1] == (5, Dropped(1, 1, 1)) and outbox.dropped == Dropped(1, 2, 2)
        outbox.append("t", render_json(1000, seen))  # seq 6 carries (1, 2-2); 3, 4 and 5 go
        assert seen[-1] == (6, Dropped(1, 2, 2)) and [e.seq for e in outbox.peek(10)] == [6]
        # seq 5 carried the notice about seq 1 and was dropped itself: that notice is reported again.
        assert outbox.dropped == Dropped(4, 1, 5)
    with Outbox(path, max_bytes=1000) as outbox:  # the pending notice is on disk
        assert outbox.dropped == Dropped(4, 1, 5)
        assert outbox.append("t", render_json(10, seen)) == 7  # 6 (carrying the notice about 2) goes
        assert seen[-1] == (7, Dropped(4, 1, 5))
        assert json.loads(outbox.peek(1)[0].payload)["dropped"] == [4, 1, 5]
        assert outbox.dropped == Dropped(2, 2, 6)
        outbox.append("t", render_json(10, seen))
        assert seen[-1] == (8, Dropped(2, 2, 6)) and outbox.dropped == Dropped()
    assert sum(d.windows for seq, d in seen if seq in (7, 8)) == 6  # seqs 1-6, each reported once


def test_a_failed_render_or_an_oversized_payload_uses_no_seq(tmp_path: Path):
    with Outbox(tmp_path / "outbox.sqlite", max_bytes=100) as outbox:
        with pytest.raises(OutboxError, match="can never fit"):
            outbox.append("t", render_json(101))
        with pytest.raises(ZeroDivisionError):
            outbox.append("t", lambda seq, dropped: bytes(1 // 0))
        with pytest.raises(OutboxError, match="must return bytes"):
            outbox.append("t", lambda seq, dropped: "text")
        assert outbox.append("t", render_json()) == 1 and len(outbox) == 1


def test_threads_share_one_outbox(tmp_path: Path):
    with Outbox(tmp_path / "outbox.sqlite") as outbox:
        got: list[int] = []
        lock = threading.Lock()

        def work() -> None:
            for _ in range(25):
                seq = outbox.append("t", render_json())
                with lock:
                    got.append(seq)
                outbox.peek(5)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(got) == list(range(1, 101)) and len(outbox) == 100


CRASHER = """
import random, sys, time
from pathlib import Path
from edgefleet.edge_runtime.outbox import Outbox

outbox = Outbox(Path(sys.argv[1]))
rng = random.Random()

def render(seq, dropped):
    time.sleep(rng.random() * 0.002)  # the kill lands inside append as often as between appends
    return b'{"seq": %d}' % seq + b" " * rng.randrange(10, 100_000)

for _ in range(100_000):
    print(outbox.append("t", render), flush=True)
"""


def run_until_killed(path: Path, reported: int) -> list[int]:
    """Starts the crasher, SIGKILLs it once it reported `reported` appends; returns the seqs it reported."""
    process = subprocess.Popen([sys.executable, "-c", CRASHER, str(path)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    seqs: list[int] = []
    try:
        while len(seqs) < reported:
            seqs.append(int(lines.get(timeout=30)))
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
    assert process.returncode == -signal.SIGKILL, process.stderr.read()
    return seqs


def check_after_crash(path: Path, reported: list[int]) -> int:
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()
    with Outbox(path) as outbox:
        entries = outbox.peek(10_000)
        stored = [e.seq for e in entries]
        # Every append that returned is there; at most one more committed before the kill landed.
        assert stored[-1] in (reported[-1], reported[-1] + 1)
        assert stored == list(range(1, stored[-1] + 1))
        for entry in entries:
            assert json.loads(entry.payload) == {"seq": entry.seq}
        assert outbox.pending_bytes == sum(len(e.payload) for e in entries)
        return stored[-1]


def test_survives_sigkill_mid_append(tmp_path: Path):
    path = tmp_path / "outbox.sqlite"
    first = run_until_killed(path, 40)
    assert first == list(range(1, 41))
    last = check_after_crash(path, first)
    second = run_until_killed(path, 20)  # the next process continues after the highest seq, never reuses one
    assert second == list(range(last + 1, last + 21))
    last = check_after_crash(path, second)
    with Outbox(path) as outbox:
        assert outbox.append("t", render_json()) == last + 1


def test_a_file_that_is_not_an_outbox_is_refused_clearly(tmp_path: Path):
    path = tmp_path / "outbox.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(OutboxError, match="cannot open the outbox"):
        Outbox(path)
