"""OutputWindow: buffered output summaries add up to what summarise_outputs gives on all the data at once,
whatever the request sizes, with windows taken while requests from several threads come in."""

from __future__ import annotations

import threading

import numpy as np

from edgefleet.core.output_summary import plan_summaries, summarise_outputs
from edgefleet.core.profile import quantile_edges
from edgefleet.core.schema import TensorSpec
from edgefleet.edge_runtime.output_window import BUFFER, OutputWindow

PRICE = TensorSpec("price", "float32", ("batch", 2))
SCORES = TensorSpec("scores", "float32", ("batch", "D"))
RNG = np.random.default_rng(11)


def summaries(values: np.ndarray, scores: np.ndarray) -> list:
    """A regression summary (buffered) and a detection one (binned per request), with edges."""
    price = plan_summaries("regression", [PRICE])[0]
    detections = plan_summaries("detection", [SCORES], {"scores": "scores", "score_threshold": 0.5})[0]
    kept = scores[scores >= 0.5]
    return [price.with_edges(quantile_edges(values)),
            detections.with_edges(np.concatenate([quantile_edges((scores >= 0.5).sum(1, keepdims=True) * 1.0),
                                                  quantile_edges(kept[:, None])]))]


def test_any_request_sizes_add_up_to_the_counts_of_all_the_data():
    values = RNG.normal(size=(1000, 2)).astype(np.float32)
    scores = RNG.random((1000, 5)).astype(np.float32)
    plan = summaries(values, scores)
    window = OutputWindow(plan, [PRICE, SCORES])
    sizes = [1, 7, BUFFER, BUFFER + 44, 1, 3]  # fills, overflows and bypasses the buffer
    start, taken = 0, []
    for i, size in enumerate(sizes * 3):
        stop = min(start + size, 1000)
        window.observe({"price": values[start:stop], "scores": scores[start:stop]})
        start = stop
        if i % 4 == 3:
            taken.append(window.take())
    taken.append(window.take())
    want = summarise_outputs(plan, {"price": values[:start], "scores": scores[:start]})
    for index in range(2):
        assert sum(t[index] for t in taken).tolist() == want[index].tolist()
    assert want[0].sum() == 2 * start


def test_requests_from_threads_while_windows_close_lose_nothing():
    values = RNG.normal(size=(4000, 2)).astype(np.float32)
    scores = RNG.random((4000, 5)).astype(np.float32)
    plan = summaries(values, scores)
    window = OutputWindow(plan, [PRICE, SCORES])
    taken: list = []
    done = threading.Event()

    def closer() -> None:
        while not done.is_set():
            taken.append(window.take())

    def client(part: int) -> None:
        for row in range(part * 1000, (part + 1) * 1000):
            window.observe({"price": values[row:row + 1], "scores": scores[row:row + 1]})

    timer = threading.Thread(target=closer)
    timer.start()
    clients = [threading.Thread(target=client, args=(part,)) for part in range(4)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    done.set()
    timer.join()
    taken.append(window.take())
    want = summarise_outputs(plan, {"price": values, "scores": scores})
    assert len(taken) > 2
    for index in range(2):
        assert sum(t[index] for t in taken).tolist() == want[index].tolist()
