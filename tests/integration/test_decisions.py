"""Label-free ok / defect decisions end to end: `detect --normal / --threshold`, the
unsupervised rule, masks, threshold.json, report.html, `evaluate`'s label-free columns and
the Python API (Detector.calibrate, predict(threshold=...))."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import f1_score, precision_score, recall_score

from anoclip import Detector
from anoclip.cli import main
from anoclip.detector import decide_all
from anoclip.errors import CalibrationError, UsageError
from anoclip.threshold import Threshold

from ..conftest import REPO, evaluate_two_categories, tiny_cli
from .test_faults import folder_hash, one_line_error, run_cli

FAST = ["--set", "tta_steps=1", "--set", "image_score=cls"]


def rows_of(folder: Path) -> list[dict]:
    with open(folder / "scores.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def images(tmp_path_factory, mvtec):
    folder = tmp_path_factory.mktemp("decide_in")
    for defect, stem in (("good", "000"), ("good", "001"), ("scratch_head", "000"),
                         ("thread_top", "000")):  # fmt: skip
        shutil.copy(mvtec / "screw/test" / defect / f"{stem}.png", folder / f"{defect}_{stem}.png")
    return folder


@pytest.fixture(scope="module")
def normals(mvtec):
    return mvtec / "screw/train/good"


def detect(images, out, config, *extra):
    return run_cli("detect", images, "--object", "screw", "--out", out, *tiny_cli(config), *FAST,
                   *extra)  # fmt: skip


@pytest.fixture(scope="module")
def normal_run(tmp_path_factory, images, normals, tiny_config):
    out = tmp_path_factory.mktemp("decide") / "normal"
    res = detect(images, out, tiny_config, "--normal", normals, "--false-reject", "0.05")
    assert res.returncode == 0, res.stderr
    return out, res


def test_normal_run_writes_decisions_masks_threshold_and_report(normal_run, images):
    out, res = normal_run
    t = Threshold.from_json(out / "threshold.json")
    assert t.method == "normal" and t.pixel_threshold is not None
    assert t.inputs["n_normal"] == 4 and t.inputs["false_reject"] == 0.05
    assert t.settings["object"] == "screw" and t.settings["settings"]["tta_steps"] == 1
    assert "max_map_side" not in t.settings  # reusable whatever size the maps are written at
    rows = rows_of(out)
    assert len(rows) == 4 and list(rows[0])[-3:] == ["decision", "score/threshold",
                                                     "threshold_method"]  # fmt: skip
    for row in rows:
        score = float(row["score"])
        review = t.review_threshold is not None and score > t.review_threshold
        assert row["decision"] == ("defect" if score > t.image_threshold else
                                   "review" if review else "ok")  # fmt: skip
        assert float(row["score/threshold"]) == pytest.approx(score / t.image_threshold, 1e-5)
        assert row["threshold_method"] == "normal"
        mask = np.asarray(Image.open(out / "masks" / f"{row['name']}.png"))
        values = np.load(out / "maps" / f"{row['name']}.npy")
        assert mask.shape == (int(row["height"]), int(row["width"]))  # the image's size
        assert values.shape == (512, 512)  # the map: at most --max-map-side 512
        if row["decision"] == "ok":  # map > pixel defect bound (bilinear upsampling keeps
            # every value within the map's range, so no pixel above a bound no value passes)
            assert not (mask > 0).any() or values.max() > t.pixel_threshold
        else:  # a flagged image's mask: the pixel review bound, never empty
            assert mask.any()
    page = (out / "report.html").read_text()
    assert page.count('class="card ') == 4 and "unsupervised-banner" not in page
    info = json.loads((out / "run.json").read_text())
    assert info["decisions"] == {"threshold": "normal", "normals": 4, "false_reject": 0.05}
    assert "calibrating on 4 known-good image(s)" in res.stderr
    assert "normal from 4 known-good images" in res.stderr


def test_overlays_use_the_scale_of_the_threshold(normal_run):
    """lo = t_typ − Δ, hi = t_typ + 3Δ, Δ = t_px_r − t_typ: the review bound mid-bar."""
    out, _ = normal_run
    t = Threshold.from_json(out / "threshold.json")
    png = Image.open(out / "maps" / f"{rows_of(out)[0]['name']}.png")
    lo, hi = (float(v) for v in png.text["anoclip:scale"].split())
    assert (lo + hi) / 2 == pytest.approx(t.pixel_review, abs=1e-5)
    assert lo + (hi - lo) / 4 == pytest.approx(t.pixel_typical, abs=1e-5)
    assert png.text["anoclip:colormap"] == "jet"


def test_threshold_file_reproduces_the_decisions(normal_run, images, tiny_config, tmp_path):
    out, _ = normal_run
    res = detect(images, tmp_path / "again", tiny_config, "--threshold", out / "threshold.json",
                 "--no-overlay")  # fmt: skip
    assert res.returncode == 0, res.stderr
    cols = ("name", "score", "decision", "score/threshold", "threshold_method")
    before = [[r[c] for c in cols] for r in rows_of(out)]
    assert [[r[c] for c in cols] for r in rows_of(tmp_path / "again")] == before
    reused = Threshold.from_json(tmp_path / "again" / "threshold.json")
    assert reused.image_threshold == Threshold.from_json(out / "threshold.json").image_threshold
    assert reused.inputs["from_file"] == str((out / "threshold.json").resolve())
    assert json.loads((tmp_path / "again/run.json").read_text())["decisions"]["threshold"] == "file"


@pytest.mark.parametrize(
    "extra,words",
    [
        (
            ["--seed", "3", "--set", "temperature=0.07"],
            "other settings (seed, settings.temperature)",
        ),
        (["--object", "transistor"], "other settings (object)"),
    ],
)
def test_mismatched_threshold_file_is_refused(normal_run, images, tiny_config, extra, words):
    out, _ = normal_run
    saved = out.parent / "saved-threshold.json"
    shutil.copy(out / "threshold.json", saved)
    before = folder_hash(out)
    res = detect(images, out, tiny_config, "--overwrite", "--threshold", saved, *extra)
    line = one_line_error(res, 2, words)
    assert "recalibrate with --normal" in line
    assert folder_hash(out) == before


def test_threshold_option_errors_are_one_line(normal_run, images, normals, tiny_config, tmp_path):
    out, _ = normal_run
    junk = tmp_path / "junk.json"
    junk.write_text('{"format": "something else"}')
    before = folder_hash(out)
    for extra, words in (
        (["--threshold", junk], "not a valid anoclip threshold file"),
        (["--threshold", tmp_path / "missing.json"], "cannot read threshold file"),
        (["--threshold", out / "threshold.json", "--normal", normals], "exclude each other"),
        (["--normal", images / "good_000.png"], "need at least 2 known-good images"),
    ):
        one_line_error(detect(images, out, tiny_config, "--resume", *extra), 2, words)
    assert folder_hash(out) == before


def test_bad_false_reject_is_a_usage_error_before_torch(images, normals, tmp_path):
    cases = [["--false-reject", v, "--normal", str(normals)] for v in ("0", "1", "-0.1", "nan",
                                                                       "abc", "1.5")]  # fmt: skip
    cases.append(["--false-reject", "0.05"])  # without --normal
    code = (
        "import sys\nfrom anoclip.cli import main\n"
        f"base = ['detect', {str(images)!r}, '--object', 'screw', '--out', "
        f"{str(tmp_path / 'o')!r}]\n"
        f"print([main(base + extra) for extra in {cases!r}], 'torch' in sys.modules)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert res.stdout.split("]")[0] == "[" + ", ".join(["2"] * len(cases)), res.stderr
    assert res.stdout.strip().endswith("False"), res.stdout  # torch never imported
    errors = [x for x in res.stderr.splitlines() if x.startswith("anoclip: error:")]
    assert len(errors) == len(cases) == len(res.stderr.splitlines())
    assert sum("--false-reject" in e for e in errors) == len(cases)
    assert not (tmp_path / "o").exists()


def test_unsupervised_rule_is_flagged_and_recomputed_on_resume(images, tiny_config, mvtec,
                                                               tmp_path):  # fmt: skip
    folder = tmp_path / "in"
    shutil.copytree(images, folder)
    out = tmp_path / "u"
    res = detect(folder, out, tiny_config, "--no-overlay")
    assert res.returncode == 0, res.stderr
    warns = [x for x in res.stderr.splitlines() if "decisions come from the set" in x]
    assert len(warns) == 1 and warns[0].startswith("anoclip: warning: decisions come from")
    t = Threshold.from_json(out / "threshold.json")
    assert t.unsupervised and t.inputs["n_images"] == 4
    rows = rows_of(out)
    assert {r["threshold_method"] for r in rows} == {"unsupervised"}
    assert all(r["decision"] == ("defect" if float(r["score"]) > t.image_threshold else
                                 "review" if float(r["score"]) > t.review_threshold else "ok")
               for r in rows)  # fmt: skip
    assert 'id="unsupervised-banner"' in (out / "report.html").read_text()
    # a resumed run decides over all rows, the earlier ones included
    shutil.copy(mvtec / "screw/test/scratch_neck/000.png", folder / "scratch_neck_000.png")
    again = detect(folder, out, tiny_config, "--no-overlay", "--resume")
    assert again.returncode == 0 and "skipped 4 already done" in again.stderr
    t5 = Threshold.from_json(out / "threshold.json")
    assert t5.inputs["n_images"] == 5
    rows = rows_of(out)
    assert len(rows) == 5 and all(r["decision"] in ("ok", "review", "defect") for r in rows)
    assert len(list((out / "masks").glob("*.png"))) == 5
    assert (out / "report.html").read_text().count('class="card ') == 5


def test_evaluate_reports_label_free_metrics(tiny_config, mvtec, tmp_path, capsys):
    out = tmp_path / "ev"
    args = evaluate_two_categories(mvtec, out, *tiny_cli(tiny_config), "--limit", "6", *FAST,
                                   "--false-reject", "0.2")  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "## Label-free decisions" in printed and "| I-F1 | I-F1max |" in printed
    assert "| screw | normal | 4 |" in printed and "| transistor | unsupervised | – |" in printed
    with open(out / "metrics.csv") as f:
        table = {r["category"]: r for r in csv.DictReader(f)}
    # one number checked against scikit-learn from scores.csv and the stored threshold
    saved = json.loads((out / "categories/screw.json").read_text())
    t = saved["label_free"]["normal"]["threshold"]
    assert t["method"] == "normal" and t["inputs"]["n_normal"] == 4
    assert t["inputs"]["false_reject"] == 0.2
    with open(out / "scores.csv") as f:
        screw = [r for r in csv.DictReader(f) if r["category"] == "screw"]
    y = [int(r["label"]) for r in screw]
    pred = [float(r["score"]) > t["image_threshold"] for r in screw]
    for name, fn in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
        want = fn(y, pred, zero_division=0)
        assert float(table["screw"][f"image_{name}_normal"]) == pytest.approx(want, abs=1e-6)
    assert 0 <= float(table["mean"]["pixel_f1_unsupervised"]) <= 1
    page = (out / "report.html").read_text()
    assert page.count('class="card ') == 12 and "screw · normal" in page
    # resume: finished categories (with their label-free numbers) are reused
    assert main(args) == 0
    assert "finished earlier" in capsys.readouterr().err
    with open(out / "metrics.csv") as f:
        assert {r["category"]: r for r in csv.DictReader(f)} == table


@pytest.fixture(scope="module")
def fast_detector(tiny_backbone):
    return Detector(backbone=tiny_backbone, image_score="cls", tta_steps=1, batch_size=4)


def test_api_calibrate_and_decide(fast_detector, images, normals):
    paths = sorted(str(p) for p in images.glob("*.png"))
    t = fast_detector.calibrate(normals, "screw", 0.05)
    assert t.method == "normal" and t.inputs["n_normal"] == 4
    assert not t.inputs["leave_one_out"] and t.settings["object"] == "screw"
    preds = fast_detector.predict(paths, "screw", threshold=t)
    for p in preds:
        assert p.decision == ("defect" if p.score > t.image_threshold else "ok")
        assert p.ratio == pytest.approx(p.score / t.image_threshold)
        assert p.defect_mask().shape == p.anomaly_map.shape and not p.unsupervised
    unsup = fast_detector.predict(paths, "screw", threshold="unsupervised")
    assert all(p.unsupervised and p.decision in ("ok", "defect") for p in unsup)
    assert [p.decision for p in decide_all(preds, t)] == [p.decision for p in preds]
    with pytest.raises(UsageError, match="whole set"):
        next(fast_detector.iter_predict(paths, "screw", threshold="unsupervised"))
    with pytest.raises(CalibrationError, match="at least 2"):
        fast_detector.calibrate(paths[:1], "screw")
    with pytest.raises(CalibrationError, match=r"\(0, 1\)"):
        fast_detector.calibrate(paths, "screw", false_reject=1.0)


def test_api_set_mode_calibrates_leave_one_out(fast_detector, images, normals):
    paths = sorted(str(p) for p in images.glob("*.png"))
    t = fast_detector.calibrate(sorted(normals.glob("*.png")), "screw", mode="dual", tta=False)
    assert t.inputs["leave_one_out"] and t.settings["mode"] == "dual"
    preds = fast_detector.predict(paths, "screw", False, mode="dual", threshold=t)
    assert all(p.mode == "dual" and p.decision is not None for p in preds)
