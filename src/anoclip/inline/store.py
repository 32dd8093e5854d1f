"""The inline state on disk: one SQLite database in WAL mode, OUT/state.sqlite.

    parts    one row per answered part, in arrival order (seq): id (its files' name too),
             source, score, decision (ok / review / defect / pending), score/threshold,
             threshold_method, map maximum, notes, size, latency, arrival time
    memory   the rolling reference memory (references/memory.py): one row per part it
             holds, its features and calibration values (Part.to_bytes), oldest first
    meta     key -> JSON: the fingerprint the state was made under, the last threshold

A part's row, its memory row and the eviction it causes commit in one transaction with
synchronous=FULL, after its map file is on disk: a result is durable before it is answered,
and a crash leaves each part either wholly there or absent (the map of an absent part is an
orphan, removed at the next start). One connection, used under a lock from any thread.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

STATE = "state.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS parts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, source TEXT NOT NULL,
    score REAL, decision TEXT NOT NULL, ratio REAL, method TEXT,
    map_max REAL, notes TEXT NOT NULL, width INTEGER, height INTEGER, latency_ms REAL,
    received REAL NOT NULL);
CREATE TABLE IF NOT EXISTS memory (seq INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL,
    part BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
COLUMNS = ("seq", "id", "source", "score", "decision", "ratio", "method", "map_max",
           "notes", "width", "height", "latency_ms", "received")  # fmt: skip


@dataclass
class Record:
    """One part's result as stored (score None while pending)."""

    id: str
    source: str
    score: float | None
    decision: str
    ratio: float | None
    method: str | None
    map_max: float | None
    notes: tuple[str, ...]
    width: int
    height: int
    latency_ms: float | None
    received: float
    seq: int | None = None

    def row(self) -> dict[str, Any]:
        out = asdict(self)
        out["notes"] = json.dumps(list(self.notes))
        return out

    @staticmethod
    def of(row: sqlite3.Row) -> Record:
        d = dict(zip(COLUMNS, row))
        d["notes"] = tuple(json.loads(d["notes"]))
        return Record(**d)


class Store:
    """OUT/state.sqlite (module doc)."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / STATE
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.RLock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _select(self, where: str = "", args: Sequence[Any] = ()) -> list[Record]:
        with self._lock:
            cur = self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM parts {where}", args)
            return [Record.of(r) for r in cur.fetchall()]

    def get(self, ident: str) -> Record | None:
        found = self._select("WHERE id = ?", (ident,))
        return found[0] if found else None

    def since(self, seq: int = 0, limit: int = 1000) -> list[Record]:
        """The parts after `seq`, in arrival order (at most `limit`)."""
        return self._select("WHERE seq > ? ORDER BY seq LIMIT ?", (int(seq), int(limit)))

    def last(self, count: int, decided: bool = True) -> list[Record]:
        """The last `count` scored parts (pending ones excluded with `decided`), oldest first."""
        where = "WHERE decision != 'pending' " if decided else ""
        rows = self._select(where + "ORDER BY seq DESC LIMIT ?", (int(count),))
        return rows[::-1]

    def pending(self) -> list[Record]:
        return self._select("WHERE decision = 'pending' ORDER BY seq")

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM parts").fetchone()[0])

    def ids(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT id FROM parts")}

    def commit(
        self,
        records: Iterable[Record],
        admitted: Iterable[tuple[str, bytes]] = (),
        evicted: Iterable[str] = (),
    ) -> None:
        """Insert or replace `records` (by id), add memory rows, drop evicted ones: one
        transaction, durable on return."""
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                for r in records:
                    row = {k: v for k, v in r.row().items() if k != "seq"}
                    names = ", ".join(row)
                    marks = ", ".join(f":{k}" for k in row)
                    updates = ", ".join(f"{k}=excluded.{k}" for k in row if k != "id")
                    cur.execute(f"INSERT INTO parts ({names}) VALUES ({marks}) "
                                f"ON CONFLICT(id) DO UPDATE SET {updates}", row)  # fmt: skip
                for ident, blob in admitted:
                    cur.execute("INSERT INTO memory (id, part) VALUES (?, ?)", (ident, blob))
                for ident in evicted:
                    cur.execute("DELETE FROM memory WHERE id = ?", (ident,))
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    def memory(self) -> list[tuple[str, bytes]]:
        """The memory rows, oldest first."""
        with self._lock:
            return list(self._db.execute("SELECT id, part FROM memory ORDER BY seq"))

    def get_meta(self, key: str) -> Any:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                             (key, json.dumps(value, default=str)))  # fmt: skip
