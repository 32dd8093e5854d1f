"""`anoclip serve` and `anoclip watch` for real: a uvicorn server on a free loopback port,
an httpx client, bad inputs, tokens, kill -9 under load, and a folder written slowly."""

from __future__ import annotations

import io
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
VISUAL = ["--visual-backbone", "timm:tf_efficientnet_lite0", "--set", "fusion=visual"]


def texture(seed: int, side: int = 96) -> bytes:
    """A smooth seeded texture as PNG bytes (good parts look alike, not identical)."""
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(0).normal(size=(side // 8, side // 8, 3))
    noise = base + 0.15 * rng.normal(size=base.shape)
    img = np.kron(noise, np.ones((8, 8, 1)))
    img = (127 + 40 * img).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`anoclip serve` in a child process, on a free loopback port."""

    def __init__(self, out: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable,
            "-m",
            "anoclip",
            "serve",
            "--object",
            "tile",
            "--out",
            str(out),
            "--port",
            str(self.port),
            "--warmup",
            "3",
            "--memory",
            "4",
            *VISUAL,
            *extra,
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        ends = time.monotonic() + 120
        while time.monotonic() < ends:
            if self.proc.poll() is not None:
                raise AssertionError(self.proc.stdout.read().decode())
            try:
                headers = (
                    {"Authorization": f"Bearer {extra[extra.index('--token') + 1]}"}
                    if "--token" in extra
                    else {}
                )
                if httpx.get(self.url + "/health", headers=headers, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise AssertionError("server did not start in 120 s")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc.stdout.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc.stdout.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("serve"))
    yield srv
    srv.stop()


def test_inspect_warms_up_then_decides(server):
    c = httpx.Client(base_url=server.url, timeout=60)
    first = [c.post(f"/inspect?id=w{i}", content=texture(i)).json() for i in range(3)]
    assert [f["decision"] for f in first[:2]] == ["pending", "pending"]
    assert first[0]["warmup_left"] == 2
    assert first[2]["decision"] in ("ok", "review", "defect")  # the warm-up set is complete
    later = c.get("/results/w0").json()
    assert later["decision"] != "pending" and later["score"] is not None
    up = c.post("/inspect?id=m1", files={"file": ("a.png", texture(10), "image/png")}).json()
    assert {"id", "score", "decision", "threshold", "notes", "latency_ms"} <= set(up)
    assert c.post("/inspect?id=m1", content=texture(99)).json() == up  # answered once
    png = c.get(up["overlay"])
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    listed = c.get("/results?since=0").json()["results"]
    assert [r["id"] for r in listed] == ["w0", "w1", "w2", "m1"]
    metrics = c.get("/metrics").text
    assert "anoclip_inspect_seconds_bucket" in metrics and "anoclip_memory_parts" in metrics


@pytest.mark.parametrize(
    "send, status, reason",
    [
        (dict(content=b""), 400, "empty body"),
        (dict(content=b"GIF89a not really"), 400, "not a readable image"),
        (dict(content=texture(1)[:200]), 400, "not a readable image"),  # truncated PNG
        (dict(content=b"x" * 300_000), 413, "byte limit"),
        (dict(params={"object": "screw"}, content=texture(1)), 400, "unknown object"),
        (dict(params={"id": "../../etc/passwd"}, content=texture(1)), 400, "id must be"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(tmp_path_factory, send, status, reason):
    srv = bad_server(tmp_path_factory)
    before = httpx.get(srv.url + "/health").json()
    r = httpx.post(srv.url + "/inspect", timeout=30, **send)
    assert r.status_code == status and reason in r.json()["error"]
    assert httpx.get(srv.url + "/health").json() == before


def test_decompression_bomb_is_refused(tmp_path_factory):
    srv = bad_server(tmp_path_factory)
    buf = io.BytesIO()
    Image.new("L", (4000, 4000)).save(buf, format="PNG")  # 16 MP in a few kB
    r = httpx.post(srv.url + "/inspect", content=buf.getvalue(), timeout=30)
    assert r.status_code == 413 and "pixel limit" in r.json()["error"]
    assert httpx.get(srv.url + "/health").json()["parts"] == 0


_BAD: list[Server] = []


def bad_server(tmp_path_factory) -> Server:
    if not _BAD:
        _BAD.append(Server(tmp_path_factory.mktemp("bad"), "--max-bytes", "200000",
                           "--max-pixels", "4000000"))  # fmt: skip
    return _BAD[0]


def teardown_module() -> None:
    for s in _BAD:
        s.stop()


def test_token_is_required(tmp_path):
    srv = Server(tmp_path / "t", "--token", "s3cret")
    try:
        assert httpx.get(srv.url + "/health").status_code == 401
        assert httpx.post(srv.url + "/inspect", content=texture(1)).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert httpx.get(srv.url + "/metrics", headers=wrong).status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert httpx.get(srv.url + "/health", headers=ok).status_code == 200
    finally:
        srv.stop()


def test_binding_beyond_loopback_needs_a_token(tmp_path):
    r = subprocess.run([sys.executable, "-m", "anoclip", "serve", "--object", "tile", "--out",
                        str(tmp_path / "x"), "--host", "0.0.0.0", *VISUAL],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2 and "--token" in r.stderr
    assert not (tmp_path / "x").exists()


def test_kill_9_under_load_loses_no_answered_part(tmp_path):
    out = tmp_path / "state"
    srv = Server(out)
    acked: list[str] = []
    lock, stop = threading.Lock(), threading.Event()

    def client(k: int) -> None:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            for j in range(40):  # bounded in count ...
                if stop.is_set():
                    return
                ident = f"c{k}-{j}"
                try:
                    r = c.post(f"/inspect?id={ident}", content=texture(100 * k + j))
                except httpx.TransportError:
                    return
                if r.status_code == 200:
                    with lock:
                        acked.append(ident)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    ends = time.monotonic() + 90  # ... and in time
    while len(acked) < 24 and time.monotonic() < ends:
        time.sleep(0.05)
    srv.kill()
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert len(acked) >= 24
    again = Server(out)
    try:
        rows = httpx.get(again.url + "/results?since=0&limit=1000").json()["results"]
        ids = [r["id"] for r in rows]
        assert len(ids) == len(set(ids))  # each once
        assert set(acked) <= set(ids)  # every answered part is there
        for r in rows:
            if r["score"] is not None:
                assert (out / "maps" / f"{r['id']}.npy").is_file()
        names = {p.name.split(".")[0] for p in (out / "maps").glob("*.npy")}
        assert names <= set(ids)  # no half-written part left behind
        assert not list((out / "maps").glob(".*.tmp"))
    finally:
        again.stop()


def test_watch_reads_slow_writes_once_across_a_restart(tmp_path):
    from anoclip import Detector
    from anoclip.inline.line import Line, LineSetup
    from anoclip.inline.watch import Watcher

    det = Detector(visual_backbone="timm:tf_efficientnet_lite0", fusion="visual")
    folder, out = tmp_path / "camera", tmp_path / "out"
    folder.mkdir()
    setup = LineSetup("tile", 4, "all", 3, 50, 256)

    def slow_write(name: str, data: bytes) -> None:
        with open(folder / name, "wb") as fh:  # in three pieces, 0.3 s apart
            for piece in (data[:100], data[100:400], data[400:]):
                fh.write(piece)
                fh.flush()
                time.sleep(0.3)

    def run_until(watcher: Watcher, count: int, line: Line, limit: float = 60) -> None:
        ends = time.monotonic() + limit
        while line.store.count() < count and time.monotonic() < ends:
            watcher.step()
            time.sleep(0.1)

    line = Line(det, setup, out, fingerprint={"t": 1})
    w = Watcher(folder, line, settle=0.4)
    writer = threading.Thread(
        target=lambda: [slow_write(f"p{i}.png", texture(i)) for i in range(4)]
    )
    writer.start()
    run_until(w, 2, line)
    line.close()  # a restart midway
    writer.join()
    for i in range(4, 6):
        slow_write(f"p{i}.png", texture(i))
    line = Line(det, setup, out, fingerprint={"t": 1})
    run_until(Watcher(folder, line, settle=0.4), 6, line)
    rows = line.store.since(0)
    line.close()
    assert sorted(r.id for r in rows) == [f"p{i}.png" for i in range(6)]
    assert all(r.decision != "unreadable" for r in rows)  # never read half-written
    assert all((out / "maps" / f"{r.id}.npy").is_file() for r in rows if r.score is not None)
