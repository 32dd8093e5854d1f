"""The inline engine: decide each part as it arrives, on the facade's one scoring loop.

    part (an image file on disk, an id) -> Detector.iter_predict (each part alone against
    the rolling memory and the known-good bank, references/memory.py; the warm-up set
    together, mode mutual) -> RollingRule (rule.py) -> the map file, durable -> one SQLite
    transaction (store.py: the result, the memory's change) -> the answer -> overlay and
    mask drawn in the background (results.writer.draw)

Warm-up: with no bank to compare with, or with the rolling rule, the first `warmup` parts
are answered "pending"; once they are all in they are scored as one set (mutual over all,
with the bank when there is one) and decided by the set rule, and their ok parts seed the
memory. A part whose id is already in the store gets its stored answer: nothing is scored
twice. One batch is scored at a time (the engine's lock).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anoclip.errors import ResultFolderError
from anoclip.inline.rule import RollingRule
from anoclip.inline.store import Record, Store
from anoclip.records import Failure, Prediction
from anoclip.references.memory import Memory, Part
from anoclip.results.writer import draw, npy_bytes
from anoclip.settings import differing_fields
from anoclip.threshold import Threshold

MAPS, IMAGES = "maps", "images"


@dataclass(frozen=True)
class Incoming:
    """A part to decide: its id, its image file, the source it is recorded as, when it
    arrived, and its decoded image when the caller has already read it (else the file is
    read)."""

    id: str
    path: Path
    source: str
    received: float
    image: Any = None


@dataclass(frozen=True)
class LineSetup:
    """How the line decides: object, memory size (0: each part against the bank alone),
    references per part ("all" or k), warm-up parts, rolling window, map side, TTA."""

    object: str
    memory: int
    refs: int | str
    warmup: int
    window: int
    max_map_side: int | None
    tta: bool | str = "none"


def durable_write(path: Path, data: bytes) -> None:
    """`data` at `path`, whole or not at all, on disk when this returns (fsync, rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def record_of(pred: Prediction | Failure, item: Incoming, started: float) -> Record:
    """The stored form of one part's prediction (or of an unreadable part)."""
    took = (time.time() - started) * 1000.0
    if isinstance(pred, Failure):
        return Record(item.id, item.source, None, "unreadable", None, None, None,
                      (pred.reason,), 0, 0, took, item.received)  # fmt: skip
    h, w = pred.image_size or pred.anomaly_map.shape
    method = pred.threshold.method if isinstance(pred.threshold, Threshold) else None
    return Record(item.id, item.source, pred.score, pred.decision or "pending",
                  pred.ratio, method, float(np.max(pred.anomaly_map)), tuple(pred.notes),
                  int(w), int(h), took, item.received)  # fmt: skip


class Drawer:
    """Overlays and masks, drawn on one background thread after the answer. While it keeps
    up (fewer than KEEP parts waiting) a part's map and decoded image wait with it; behind
    that only its id and threshold do, and the map and image are read from disk when its
    turn comes, so memory stays flat however far a sustained load puts drawing behind."""

    KEEP = 8

    def __init__(self, draw: Callable[..., None]) -> None:
        self._draw, self._waiting, self._lock = draw, 0, threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1)

    def submit(self, ident: str, values: Any, image: Any, threshold: Any) -> None:
        with self._lock:
            light = self._waiting >= self.KEEP
            self._waiting += 1
        job = self._pool.submit(self._draw, ident, None if light else values,
                                None if light else image, threshold)  # fmt: skip
        job.add_done_callback(self._done)

    def _done(self, _: object) -> None:
        with self._lock:
            self._waiting -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def check_fingerprint(store: Store, fingerprint: dict) -> None:
    """A state folder goes on only under the settings it was made with."""
    found = store.get_meta("fingerprint")
    if found is None:
        store.set_meta("fingerprint", fingerprint)
        return
    changed = differing_fields(found, json.loads(json.dumps(fingerprint, default=str)))
    if changed:
        raise ResultFolderError(
            f"{store.path.parent} holds a line run with other settings ({', '.join(changed[:5])}):"
            " use the settings it was made with, or another --out"
        )


def remove_orphans(out: Path, names: set[str]) -> None:
    """Map and image files of parts that never committed (a crash between file and row)."""
    for folder in (out / MAPS, out / IMAGES):
        for f in folder.iterdir():
            stem = f.name.rsplit(".", 1)[0] if not f.name.startswith(".") else ""
            if f.is_file() and (not stem or stem not in names):
                f.unlink(missing_ok=True)


def stored_memory(store: Store, setup: LineSetup, bank: Any, det: Any) -> Memory | None:
    """The rolling memory as the store holds it (None: `setup.memory` = 0)."""
    if setup.memory <= 0:
        return None
    meta = bank.meta if bank is not None else det.visual.bank_meta(setup.object)
    memory = Memory(meta, bank, setup.memory, setup.refs)
    for ident, blob in store.memory()[-setup.memory :]:
        memory.admit(ident, Part.from_bytes(blob))
    return memory


class Line:
    """The inline engine (module doc) over a loaded :class:`~anoclip.detector.Detector`:
    `bank` the known-good bank (None: none), `threshold` a fixed rule (None: rolling),
    `fingerprint` what a restart on `out` must match."""

    def __init__(
        self,
        det: Any,
        setup: LineSetup,
        out: Path,
        *,
        bank: Any = None,
        threshold: Threshold | None = None,
        fingerprint: dict | None = None,
    ) -> None:
        self.det, self.setup, self.out, self.bank = det, setup, Path(out), bank
        for d in (MAPS, IMAGES):
            (self.out / d).mkdir(parents=True, exist_ok=True)
        self.store = Store(self.out)
        check_fingerprint(self.store, fingerprint or {})
        self.memory = stored_memory(self.store, setup, bank, det)
        self.rule = RollingRule(setup.window, threshold, fingerprint)
        earlier = self.store.last(setup.window)
        self.rule.seed((r.score, r.map_max) for r in earlier if r.score is not None)
        self.lock = threading.Lock()
        self._drawer = Drawer(self.draw)
        remove_orphans(self.out, self.store.ids())

    @property
    def warming(self) -> bool:
        """Whether parts are still answered "pending" (module doc)."""
        needs = self.rule.fixed is None or self.bank is None
        return needs and not self.rule.scores

    @property
    def references(self) -> Any:
        return self.memory if self.memory is not None else self.bank

    def inspect(self, items: Sequence[Incoming]) -> list[Record]:
        """Decide `items` (a micro-batch), or give their stored answers; one record each."""
        with self.lock:
            done: dict[str, Record | None] = {i.id: self.store.get(i.id) for i in items}
            fresh = list({i.id: i for i in items if done[i.id] is None}.values())
            if fresh:
                done.update(self._warm(fresh) if self.warming else self._score(fresh))
            return [done[i.id] for i in items]  # type: ignore[misc]

    def _predict(self, items: Sequence[Incoming], **mode: Any) -> list:
        """The facade's predictions for `items` (decoded images, else their files)."""
        inputs = [str(i.path) if i.image is None else i.image for i in items]
        s = self.setup
        return list(self.det.iter_predict(inputs, s.object, s.tta, bank=self.references,
                                          max_map_side=s.max_map_side, **mode))  # fmt: skip

    def _score(self, items: Sequence[Incoming]) -> dict[str, Record]:
        started = time.time()
        preds = self._predict(items)
        decided = [
            p if isinstance(p, Failure) else p.decided(self.rule.next(p.score, p.anomaly_map.max()))
            for p in preds
        ]
        return self._commit(items, decided, started)

    def _warm(self, items: Sequence[Incoming]) -> dict[str, Record]:
        """Warm-up: answer pending; once `warmup` parts are in, decide them as a set."""
        now = time.time()
        pending = [Record(i.id, i.source, None, "pending", None, None, None, (), 0, 0,
                          None, i.received) for i in items]  # fmt: skip
        self.store.commit(pending)
        waiting = self.store.pending()
        if len(waiting) < self.setup.warmup:
            return {r.id: r for r in pending}
        parts = [Incoming(r.id, Path(r.source), r.source, r.received) for r in waiting]
        preds = self._predict(parts, mode="mutual", refs="all")
        good = [p for p in preds if isinstance(p, Prediction)]
        self.rule.seed((p.score, float(p.anomaly_map.max())) for p in good)
        threshold = self.rule.fixed or self.rule.current()
        self.rule.last = threshold
        decided = [p if isinstance(p, Failure) else p.decided(threshold) for p in preds]
        return self._commit(parts, decided, now)

    def _commit(self, items: Sequence[Incoming], preds: Sequence, started: float) -> dict:
        """Maps on disk, then results and the memory's change in one transaction."""
        records, admitted, evicted = [], [], []
        for item, pred in zip(items, preds):
            if isinstance(pred, Prediction):
                data = npy_bytes(pred.anomaly_map, np.float16)
                durable_write(self.out / MAPS / f"{item.id}.npy", data)
            rec = record_of(pred, item, min(started, item.received))
            records.append(rec)
            part = None if self.memory is None else self.memory.observed.pop(pred.source, None)
            if part is not None and rec.decision == "ok":
                admitted.append((item.id, part.to_bytes()))
                gone = self.memory.admit(item.id, part)
                evicted += [gone] if gone else []
        if self.memory is not None:
            self.memory.observed.clear()
        self.store.commit(records, admitted, evicted)
        for item, pred in zip(items, preds):
            if isinstance(pred, Prediction):
                self._drawer.submit(item.id, pred.anomaly_map, item.image, pred.threshold)
        return {r.id: self.store.get(r.id) or r for r in records}  # with their seq

    def draw(
        self, ident: str, values: Any = None, image: Any = None, threshold: Any = None
    ) -> None:
        """OUT/maps/ID.png and OUT/masks/ID.png of a stored part: its map `values` (None: its
        map file), decoded `image` (None: its file is read), the `threshold` that decided it
        (None: the latest)."""
        rec = self.store.get(ident)
        if rec is None or rec.score is None:
            return
        values = self.out / MAPS / f"{ident}.npy" if values is None else values
        threshold = self.rule.last if threshold is None else threshold
        source = rec.source if image is None else image
        draw(self.out, ident, values, source, threshold, rec.decision, (rec.width, rec.height))

    def close(self) -> None:
        self._drawer.close()
        self.store.close()
