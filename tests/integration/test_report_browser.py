"""The report in a real browser: headless Debian chromium loads report.html built from the
real MVTec screw images (4 known-good + test images) with synthetic maps, and the checks
read the DOM after its script ran (--dump-dom) and a screenshot. Skipped without chromium.

Set ANOCLIP_SCREENSHOTS=DIR to keep the screenshots (docs/report.png comes from here).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anoclip import threshold as threshold_rule
from anoclip.decide import calibrate
from anoclip.results import report
from tests.report_dom import parse

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    "--virtual-time-budget=5000",
]  # fmt: skip


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    pytest.skip("chromium is not installed (apt-get install -y chromium)")


def browse(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    cmd = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def synthetic_map(image: Path, mask: Path | None, amplitude: float, rng) -> np.ndarray:
    """A smooth 15×15 noise map at the image's size, plus `amplitude` on the real defect."""
    w, h = Image.open(image).size
    grid = 0.5 + 0.02 * rng.standard_normal((15, 15)).astype(np.float32)
    values = report.resize_map(grid, (64, 64))
    if mask is not None:
        gt = Image.open(mask).convert("L").resize((64, 64), Image.BILINEAR)
        values = values + amplitude * np.asarray(gt, np.float32) / 255
    return report.resize_map(values, (w, h))


def image_score(values: np.ndarray) -> float:
    """Mean of the top 1 % of the map (a plausible image score)."""
    flat = np.sort(values[::8, ::8].ravel())
    return float(flat[-max(1, flat.size // 100) :].mean())


@pytest.fixture(scope="module")
def built(tmp_path_factory, mvtec):
    _chromium()  # skip before building when there is no browser
    rng = np.random.default_rng(0)
    root = mvtec / "screw"
    normals = sorted((root / "train" / "good").glob("*.png"))
    normal_maps = [synthetic_map(p, None, 0.0, rng) for p in normals]
    normal_scores = [image_score(m) for m in normal_maps]
    threshold = calibrate.calibrate_normal(
        normal_scores, normal_maps, settings={"model": "synthetic"}
    )
    rows = []
    for folder in sorted((root / "test").iterdir()):
        for path in sorted(folder.glob("*.png"))[:5]:
            mask = root / "ground_truth" / folder.name / f"{path.stem}_mask.png"
            mask = mask if mask.exists() else None
            values = synthetic_map(path, mask, rng.uniform(0.0, 0.4), rng)
            score = image_score(values)
            rows.append(
                report.ReportRow(
                    source=path, name=f"{folder.name}_{path.stem}", score=score,
                    decision=threshold_rule.decide(score, threshold),
                    ratio=threshold_rule.ratio(score, threshold), map=values, mask=mask,
                    label=folder.name, category="screw",
                    notes=("unfamiliar",) if folder.name == "manipulated_front" else (),
                )
            )  # fmt: skip
    out = tmp_path_factory.mktemp("report")
    info = {"model": "synthetic maps", "images": len(rows), "unused": None, "extra": {"x": 1}}
    path = report.write_report(
        out, rows, threshold, info, "screw (synthetic)", normal_scores=normal_scores,
        settings_shown=["model", "images", "unused"],
    )  # fmt: skip
    return path, rows


def test_rendered_page(built, tmp_path):
    path, rows = built
    dom = parse(browse(tmp_path, path.as_uri(), "--dump-dom").stdout)
    assert len(dom.cards) == len(rows)
    assert dom.bars > 0 and "histogram" in dom.ids and "threshold-line" in dom.ids
    first = float(dom.cards[0]["data-score"])
    assert first == pytest.approx(max(r.score for r in rows), rel=1e-6)
    assert dom.texts["count-shown"] == str(len(rows))
    assert "open" not in dom.ids["viewer"]
    for decision in ("defect", "review", "ok"):
        assert dom.texts[f"count-{decision}"] == str(sum(r.decision == decision for r in rows))
    assert dom.texts["count-unfamiliar"] == str(sum(r.unfamiliar for r in rows)) != "0"
    assert {"review-band", "review-line", "known-good"} <= set(dom.ids)
    assert [k for k, _ in dom.tables["settings"]] == ["images", "model"]


@pytest.mark.parametrize("decision", ["defect", "review", "ok"])
def test_filter_from_the_address(built, tmp_path, decision):
    path, rows = built
    want = sum(r.decision == decision for r in rows)
    assert 0 < want < len(rows)  # both kinds present, so the filter is checkable
    dom = parse(browse(tmp_path, f"{path.as_uri()}#filter={decision}", "--dump-dom").stdout)
    visible = dom.visible_cards()
    assert len(visible) == want and all(c["data-decision"] == decision for c in visible)
    assert dom.texts["count-shown"] == str(want)


def test_enlarged_view_opens(built, tmp_path):
    path, rows = built
    top = max(rows, key=lambda r: r.score)
    dom = parse(browse(tmp_path, f"{path.as_uri()}#view=0", "--dump-dom").stdout)
    assert "open" in dom.ids["viewer"]
    assert dom.texts["v-title"] == f"#1 {top.name}"
    assert dom.texts["v-decision"] == top.decision


@pytest.mark.parametrize(("fragment", "name"), [("", "report.png"), ("#view=0", "viewer.png")])
def test_screenshot(built, tmp_path, fragment, name):
    path, _ = built
    shot = tmp_path / name
    browse(tmp_path, path.as_uri() + fragment, "--window-size=1280,1400", f"--screenshot={shot}")
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert pixels.shape == (1400, 1280, 3)
    assert pixels.std() > 20  # not a blank page
    keep = os.environ.get("ANOCLIP_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / name)
