"""`anoclip watch`: the inline engine on a folder a camera writes into.

A file is taken once it is complete: its size and modification time unchanged for `settle`
seconds and the image decodes (a file renamed in is complete at once, and still checked).
watchdog's observer (inotify, or polling with `poll`) wakes the scan as files change; a scan
every `settle` seconds catches what an observer misses. Each file's id is its path under the
folder, so a restart skips every file already in the store and scores the rest: nothing
twice, nothing dropped.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from anoclip.data.images import load_rgb
from anoclip.data.listing import list_inputs
from anoclip.errors import ImageDecodeError
from anoclip.extras import require
from anoclip.inline.line import Incoming, Line

SETTLE = 0.5  # seconds a file must stay unchanged
BATCH = 8


def file_id(folder: Path, path: Path) -> str:
    """A store id for `path` under `folder`: its relative path, "/" as "__", other unsafe
    characters as "_", a hash suffix when longer than 128."""
    rel = path.relative_to(folder).as_posix().replace("/", "__")
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", rel)
    if len(safe) > 128:
        safe = safe[:111] + "-" + hashlib.sha1(rel.encode()).hexdigest()[:16]
    return safe


def decoded(path: Path) -> Any:
    """The image at `path` as the data path decodes it (data.images.load_rgb); None when it
    does not decode (yet)."""
    try:
        return load_rgb(path)
    except ImageDecodeError:
        return None


class Watcher:
    """Feeds `line` the complete new images of `folder` (module doc)."""

    def __init__(self, folder: Path, line: Line, settle: float = SETTLE, poll: bool = False):
        self.folder, self.line, self.settle, self.poll = Path(folder), line, float(settle), poll
        self._seen: dict[Path, tuple[int, float, float]] = {}  # size, mtime, first seen so
        self._done = line.store.ids()  # ids already decided, read once
        self.wake = threading.Event()

    def ready(self) -> list[tuple[str, Path, Any]]:
        """The complete files not yet in the store, oldest first, with their decoded images
        (None: a file that never decoded, read again and recorded unreadable)."""
        now, out = time.time(), []
        for path in list_inputs([str(self.folder)], out=str(self.line.out)).paths:
            ident = file_id(self.folder, path)
            if ident in self._done:
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            key = (st.st_size, st.st_mtime)
            last = self._seen.get(path)
            if last is None or last[:2] != key:
                self._seen[path] = (*key, now)
                continue
            stable = now - last[2] >= self.settle and now - st.st_mtime >= self.settle
            image = decoded(path) if stable else None
            if stable and (image is not None or now - st.st_mtime > 20 * self.settle):
                out.append((st.st_mtime, ident, path, image))
        return [(i, p, img) for _, i, p, img in sorted(out, key=lambda x: x[:2])]

    def step(self) -> int:
        """One scan; returns the parts decided."""
        todo = self.ready()
        for start in range(0, len(todo), BATCH):
            chunk = todo[start : start + BATCH]
            now = time.time()
            self.line.inspect([Incoming(i, p, str(p), now, img) for i, p, img in chunk])
            for i, p, _ in chunk:
                self._seen.pop(p, None)
                self._done.add(i)
        return len(todo)

    def run(self, stop: threading.Event, after: Callable[[int], None] | None = None) -> None:
        """Scan until `stop` is set; `after(count)` runs after each scan that decided parts."""
        observer = self._observer()
        try:
            while not stop.is_set():
                count = self.step()
                if count and after is not None:
                    after(count)
                self.wake.wait(self.settle / 2)
                self.wake.clear()
        finally:
            observer.stop()
            observer.join(timeout=5)

    def _observer(self):  # noqa: ANN202 - a watchdog observer
        require("watchdog", "serve", "anoclip watch")
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver

        wake = self.wake

        class Wake(FileSystemEventHandler):
            def on_any_event(self, event) -> None:  # noqa: ANN001
                wake.set()

        observer = PollingObserver() if self.poll else Observer()
        observer.schedule(Wake(), str(self.folder), recursive=True)
        observer.start()
        return observer
