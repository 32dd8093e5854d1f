"""Size and load time of report.html for 1,000 images (real MVTec images, synthetic maps).

The 268 images of ../shared/data/mvtec_ad/{screw,transistor} are cycled to N rows (default
1,000), each with a synthetic float32 map at the image's size (1024×1024; smooth noise plus
a random amplitude on the real defect mask), stored as .npy as `anoclip detect` does. The
threshold comes from the 8 train/good images. Then:

* write time and size of report.html;
* headless chromium (Debian, software rendering): wall time of --dump-dom and --screenshot
  on the report against a blank page (browser start-up), and the page's own navigation
  timing (DOMContentLoaded, load) plus the cost of parsing the enlarged-view data on the
  first click, read from a copy of the page with a timing script appended.

Run: .venv/bin/python benchmarks/report_size.py [--n 1000] [--workers 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from anoclip.decide import calibrate
from anoclip.results import report

REPO = Path(__file__).resolve().parents[1]
MVTEC = REPO.parent / "shared" / "data" / "mvtec_ad"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
PROBE = """<script>
addEventListener("load", () => setTimeout(() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const t0 = performance.now();
  JSON.parse(document.getElementById("details").textContent);
  const parse = performance.now() - t0;
  document.body.setAttribute("data-probe", JSON.stringify({
    dom_content_loaded_ms: nav.domContentLoadedEventEnd, load_ms: nav.loadEventEnd,
    details_parse_ms: parse}));
}, 0));
</script></body>"""


def synthetic_map(image: Path, mask: Path | None, amplitude: float, rng) -> np.ndarray:
    w, h = Image.open(image).size
    grid = 0.5 + 0.02 * rng.standard_normal((15, 15)).astype(np.float32)
    values = report.resize_map(grid, (64, 64))
    if mask is not None:
        gt = Image.open(mask).convert("L").resize((64, 64), Image.BILINEAR)
        values = values + amplitude * np.asarray(gt, np.float32) / 255
    return report.resize_map(values, (w, h))


def image_score(values: np.ndarray) -> float:
    flat = np.sort(values[::8, ::8].ravel())
    return float(flat[-max(1, flat.size // 100) :].mean())


def chromium(profile: Path, url: str, *args: str) -> tuple[float, str]:
    cmd = ["/usr/bin/chromium", *FLAGS, f"--user-data-dir={profile}", *args, url]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)
    return time.perf_counter() - t0, out.stdout


def best_of(k: int, fn) -> tuple[float, str]:
    runs = [fn() for _ in range(k)]
    return min(runs, key=lambda r: r[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", type=Path, help="keep the report folder here")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    work = Path(tempfile.mkdtemp(prefix="anoclip-report-"))
    maps_dir = work / "maps"
    maps_dir.mkdir()

    normals = sorted(MVTEC.glob("*/train/good/*.png"))
    normal_maps = [synthetic_map(p, None, 0.0, rng) for p in normals]
    threshold = calibrate.calibrate_normal(
        [image_score(m) for m in normal_maps], normal_maps, settings={"model": "synthetic"}
    )
    sources = sorted(MVTEC.glob("*/test/*/*.png"))
    per_source = {}
    for i, path in enumerate(sources):
        defect, category = path.parent.name, path.parents[2].name
        mask = MVTEC / category / "ground_truth" / defect / f"{path.stem}_mask.png"
        values = synthetic_map(path, mask if mask.exists() else None, rng.uniform(0, 0.4), rng)
        np.save(maps_dir / f"{i}.npy", values)
        per_source[path] = (maps_dir / f"{i}.npy", image_score(values), category, defect)
    rows = []
    for i in range(args.n):
        path = sources[i % len(sources)]
        npy, score, category, defect = per_source[path]
        score += float(rng.normal(0, 0.002))  # distinct scores per copy
        rows.append(
            report.ReportRow(
                source=path, name=f"{i:04d}_{category}_{defect}_{path.stem}", score=score,
                decision=calibrate.decide(score, threshold),
                ratio=calibrate.ratio(score, threshold), map=npy,
            )
        )  # fmt: skip

    out = work / "out"
    t0 = time.perf_counter()
    page = report.write_report(
        out, rows, threshold, {"benchmark": "report_size"}, f"{args.n} images",
        workers=args.workers,
    )  # fmt: skip
    write_s = time.perf_counter() - t0
    html = page.read_text(encoding="utf-8")
    probe = out / "probe.html"
    probe.write_text(html.replace("</body>", PROBE, 1), encoding="utf-8")
    blank = out / "blank.html"
    blank.write_text("<!DOCTYPE html><title>blank</title><p>blank</p>", encoding="utf-8")

    profile = work / "profile"
    chromium(profile, blank.as_uri(), "--dump-dom")  # warm the profile and the disk cache
    size = "--window-size=1280,1400"
    blank_dom, _ = best_of(3, lambda: chromium(profile, blank.as_uri(), "--dump-dom"))
    dom_s, dom = best_of(3, lambda: chromium(profile, page.as_uri(), "--dump-dom"))
    blank_shot, _ = best_of(
        3, lambda: chromium(profile, blank.as_uri(), size, f"--screenshot={work / 'b.png'}")
    )
    shot_s, _ = best_of(
        3, lambda: chromium(profile, page.as_uri(), size, f"--screenshot={work / 'r.png'}")
    )
    _, probed = chromium(profile, probe.as_uri(), "--dump-dom", "--virtual-time-budget=10000")
    timing = json.loads(re.search(r'data-probe="([^"]*)"', probed).group(1).replace("&quot;", '"'))
    cards = dom.count('class="card ')
    result = {
        "images": args.n,
        "cards_in_dom": cards,
        "report_bytes": page.stat().st_size,
        "report_mib": round(page.stat().st_size / 2**20, 2),
        "write_s": round(write_s, 1),
        "workers": args.workers,
        "chromium_dump_dom_s": round(dom_s, 2),
        "chromium_dump_dom_blank_s": round(blank_dom, 2),
        "chromium_screenshot_s": round(shot_s, 2),
        "chromium_screenshot_blank_s": round(blank_shot, 2),
        **{k: round(v, 1) for k, v in timing.items()},
    }
    print(json.dumps(result, indent=2))
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(page, args.keep / "report.html")
        shutil.copy(work / "r.png", args.keep / "report.png")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
