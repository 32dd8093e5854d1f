"""Micro-batching: concurrent parts scored together, a lone part not held back.

One worker thread takes the first waiting part, then gathers more for at most `wait`
seconds or until `size` are in, and hands the batch to the engine (Line.inspect). A part
waits at most `wait` beyond the batch before it; the batch's forward pass and search are
shared, so throughput under load approaches batch `detect`'s.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

WAIT = 0.02  # seconds a batch waits to fill
SIZE = 8  # parts per batch at most (Runtime.batch_size's default)


class Batcher:
    """Feeds `run` (a list of items -> a list of results, in order) with micro-batches."""

    def __init__(self, run: Callable[[Sequence[Any]], list[Any]], wait: float = WAIT,
                 size: int = SIZE) -> None:  # fmt: skip
        self.run, self.wait, self.size = run, float(wait), int(size)
        self._queue: queue.Queue[tuple[Any, Future] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="anoclip-batcher", daemon=True)
        self._thread.start()

    def submit(self, item: Any) -> Future:
        fut: Future = Future()
        self._queue.put((item, fut))
        return fut

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=60)

    def _gather(self, first: tuple[Any, Future]) -> tuple[list[tuple[Any, Future]], bool]:
        batch, ends = [first], time.monotonic() + self.wait
        while len(batch) < self.size:
            left = ends - time.monotonic()
            try:
                nxt = (
                    self._queue.get(timeout=max(left, 0)) if left > 0 else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if nxt is None:
                return batch, True
            batch.append(nxt)
        return batch, False

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = self._gather(first)
            try:
                results = self.run([item for item, _ in batch])
                for (_, fut), res in zip(batch, results):
                    fut.set_result(res)
            except BaseException as exc:  # every waiting part hears why
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
            if stop:
                return
