"""Inline inspection on real features: latency, throughput and quality in stream order.

    python benchmarks/inline.py [--orders 5] [--memories 16,32] [--json FILE]

EfficientNet-Lite0 (ImageNet), fusion=visual, MVTec AD transistor test (60 good, 40
defective) with the 4 train/good images as --normal. Three tables:
1. quality in stream order: the test set sent in seeded random orders (seeds 10.., apart
   from the orders 1-2 the warm-up and memory defaults were chosen on), one part at a time,
   to the inline engine; escapes, good flagged and image AUROC of the streamed scores,
   beside batch `detect`'s default (mutual over all with the bank) on the same images;
   a burst row: the 10 first defects in a row right after the warm-up, and how many
   defective parts the memory holds afterwards;
2. latency of one client (p50 / p99 per part) through the real HTTP service;
3. throughput with 1, 4 and 16 concurrent clients, beside batch detect's images per second:
   its default for these inputs (mutual over all + bank, the set scored at once) and
   --mode anoclip (each image alone against the bank, the cheapest batch path).
Labels are only read to measure.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "mvtec_ad" / "transistor"
sys.path.insert(0, str(ROOT / "tests"))


def auroc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s))


def stream(det, bank, paths, memory: int, out: Path) -> tuple[list, object]:
    from anoclip.inline.line import Incoming, Line, LineSetup
    from anoclip.inline.rule import WARMUP, WINDOW

    shutil.rmtree(out, ignore_errors=True)
    line = Line(det, LineSetup("transistor", memory, "all", WARMUP, WINDOW, 512), out,
                bank=bank, fingerprint={})  # fmt: skip
    for i, p in enumerate(paths):
        line.inspect([Incoming(f"p{i:03d}", Path(p), str(p), time.time())])
    rows = line.store.since(0, 10**6)
    held = list(line.memory.ids)
    line.close()
    return rows, held


def quality(rows, truth: dict) -> tuple[float, float, float]:
    y = np.array([truth[r.source] for r in rows])
    s = np.array([r.score for r in rows])
    d = np.array([r.decision for r in rows])
    return float(np.mean(d[y] == "ok")), float(np.mean(d[~y] != "ok")), auroc(y, s)


def quality_table(det, bank, args) -> list[dict]:
    paths = sorted(str(p) for p in (DATA / "test").glob("*/*.png"))
    truth = {p: "/good/" not in p for p in paths}
    t = time.perf_counter()
    batch = det.predict(paths, "transistor", mode="mutual", refs="all", bank=bank,
                        threshold="unsupervised")  # fmt: skip
    batch_s = time.perf_counter() - t
    y = np.array([truth[p.source] for p in batch])
    d = np.array([p.decision for p in batch])
    base = auroc(y, np.array([p.score for p in batch]))
    miss = float(np.mean(d[y] == "ok"))
    out = [dict(kind="batch detect (mutual all + bank)", memory="-", escapes=miss,
                flagged=float(np.mean(d[~y] != "ok")), auroc=base, seconds=batch_s)]  # fmt: skip
    t = time.perf_counter()
    det.predict(paths, "transistor", bank=bank)  # --mode anoclip: each image alone vs the bank
    out[0]["alone_seconds"] = time.perf_counter() - t
    tmp = Path(tempfile.mkdtemp())
    for memory in args.memories:
        found = []
        for seed in range(10, 10 + args.orders):
            order = paths[:]
            random.Random(seed).shuffle(order)
            rows, _ = stream(det, bank, order, memory, tmp / "q")
            found.append(quality(rows, truth))
        e, f, a = (statistics.median(x) for x in zip(*found))
        out.append(dict(kind=f"stream, {args.orders} orders (median)", memory=memory, escapes=e,
                        flagged=f, auroc=a, per_order=found))  # fmt: skip
        order = paths[:]
        random.Random(10).shuffle(order)
        bad = [p for p in order if truth[p]]
        rest = [p for p in order if p not in bad[:10]]
        burst = rest[:20] + bad[:10] + rest[20:]
        rows, held = stream(det, bank, burst, memory, tmp / "b")
        e, f, a = quality(rows, truth)
        src = {r.id: r.source for r in rows}
        out.append(dict(kind="stream, 10 defects in a row", memory=memory, escapes=e, flagged=f,
                        auroc=a, defects_in_memory=sum(truth[src[i]] for i in held),
                        memory_size=len(held)))  # fmt: skip
    return out


def start_server(out: Path, port: int):
    import subprocess

    import httpx

    cmd = [sys.executable, "-m", "anoclip", "serve", "--object", "transistor", "--out", str(out),
           "--port", str(port), "--normal", str(DATA / "train" / "good"),
           "--visual-backbone", "timm:tf_efficientnet_lite0", "--set", "fusion=visual"]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError("server did not start")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def service_table(args, batch_rate: float) -> dict:
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    paths = sorted((DATA / "test").glob("*/*.png"))
    data = [p.read_bytes() for p in paths]
    out = Path(tempfile.mkdtemp()) / "srv"
    proc = start_server(out, port)
    url = f"http://127.0.0.1:{port}/inspect"
    count = [0]

    def send(c, k: int) -> float:
        count[0] += 1
        t = time.perf_counter()
        r = c.post(f"{url}?id=n{count[0]}", content=data[k % len(data)])
        assert r.status_code == 200, r.text
        return time.perf_counter() - t

    try:
        with httpx.Client(timeout=120) as c:
            for k in range(20):  # the warm-up
                send(c, k)
            rss0 = rss_mb(proc.pid)
            lat = [send(c, k) for k in range(args.parts)]
        rates = {}
        for clients in (1, 4, 16):
            per = max(1, args.parts // clients)

            def run(i: int, per: int = per) -> None:
                with httpx.Client(timeout=300) as c:
                    for j in range(per):
                        send(c, 7 * i + j)

            threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
            t = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            rates[clients] = clients * per / (time.perf_counter() - t)
        rss1 = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return dict(p50=float(np.median(lat)), p99=float(np.quantile(lat, 0.99)), rates=rates,
                batch_rate=batch_rate, rss_start=rss0, rss_end=rss1)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orders", type=int, default=5)
    ap.add_argument("--memories", default="16,32")
    ap.add_argument("--parts", type=int, default=48, help="parts per latency / load round")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    args.memories = [int(m) for m in args.memories.split(",")]
    warnings.simplefilter("ignore")
    import anoclip

    flags = Path("/proc/cpuinfo").read_text()
    cpu = next(x for x in flags.splitlines() if x.startswith("model name")).split(":")[1].strip()
    print(f"CPU: {cpu}; AVX-512: {'avx512f' in flags}; AMX: {'amx_tile' in flags}")
    det = anoclip.Detector(visual_backbone="timm:tf_efficientnet_lite0", fusion="visual")
    bank = det.build_bank(sorted(str(p) for p in (DATA / "train" / "good").glob("*.png")),
                          "transistor")  # fmt: skip
    rows = quality_table(det, bank, args)
    print("\n| run | memory | escapes | good flagged | image AUROC |\n|---|---|---|---|---|")
    for r in rows:
        extra = (
            f" (memory holds {r['defects_in_memory']} defective of {r['memory_size']})"
            if "defects_in_memory" in r
            else ""
        )
        print(
            f"| {r['kind']}{extra} | {r['memory']} | {r['escapes']:.1%} | {r['flagged']:.1%} "
            f"| {r['auroc']:.3f} |"
        )
    batch_rate = 100 / rows[0]["seconds"]
    alone_rate = 100 / rows[0]["alone_seconds"]
    svc = service_table(args, batch_rate)
    print(
        "\n| single client p50 | p99 | 1 client | 4 clients | 16 clients | batch detect "
        "(default: mutual all + bank) | batch detect --mode anoclip (bank alone) |"
        f"\n|---|---|---|---|---|---|---|\n| {svc['p50'] * 1000:.0f} ms | "
        f"{svc['p99'] * 1000:.0f} ms"
        + "".join(f" | {svc['rates'][c]:.2f} parts/s" for c in (1, 4, 16))
        + f" | {batch_rate:.2f} images/s | {alone_rate:.2f} images/s |"
    )
    print(
        f"service RSS after warm-up {svc['rss_start']:.0f} MB, after the load rounds "
        f"{svc['rss_end']:.0f} MB"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"quality": rows, "service": svc}, indent=1))


if __name__ == "__main__":
    main()
