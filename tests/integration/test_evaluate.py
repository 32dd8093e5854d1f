"""Datasets, the evaluation runner, `anoclip evaluate` and benchmarks/paper_table.py."""

from __future__ import annotations

import csv
import importlib.util
import json

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from anoclip import Detector
from anoclip.cli import main
from anoclip.data.datasets import DatasetError, Item, MaskLoader, load_dataset
from anoclip.evaluation.protocol import LF_NAMES, EvalOptions, evaluate, subset

from ..conftest import REPO, evaluate_two_categories, tiny_cli


def png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_folder_dataset(root, n_good=4, n_bad=4, size=64, masks=True):
    rng = np.random.default_rng(0)
    for i in range(n_good):
        png(root / "good" / f"{i:03d}.png", rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    for i in range(n_bad):
        img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        img[10:30, 10:30] = 255
        png(root / "crack" / f"{i:03d}.png", img)
        if masks:
            m = np.zeros((size, size), np.uint8)
            m[10:30, 10:30] = 255
            png(root / "masks" / "crack" / f"{i:03d}_mask.png", m)
    return root


def test_mvtec_loader_counts_and_masks(mvtec):
    data = load_dataset("mvtec", mvtec, ["screw", "transistor"])
    for cat, (good, bad) in {"screw": (41, 119), "transistor": (60, 40)}.items():
        items = data[cat]
        assert sum(i.label == 0 for i in items) == good and sum(i.label for i in items) == bad
        assert all(i.mask is not None and i.mask.exists() for i in items if i.label)
        assert all(i.mask is None for i in items if not i.label)
    assert {i.defect for i in data["screw"]} >= {"good", "scratch_head", "thread_top"}


def test_mvtec_layout_errors(tmp_path):
    root = tmp_path / "mv"
    png(root / "screw/test/good/000.png", np.zeros((8, 8), np.uint8))
    png(root / "screw/test/crack/000.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DatasetError, match="missing mask"):
        load_dataset("mvtec", root, strict=False)
    png(root / "screw/ground_truth/crack/000_mask.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DatasetError, match="official split has 41 \\+ 119"):
        load_dataset("mvtec", root)
    assert len(load_dataset("mvtec", root, strict=False)["screw"]) == 2
    with pytest.raises(DatasetError, match="not in"):
        load_dataset("mvtec", root, ["bottle"], strict=False)
    with pytest.raises(DatasetError, match="unknown dataset layout"):
        load_dataset("kitti", root)
    with pytest.raises(DatasetError, match="no MVTec AD categories"):
        load_dataset("mvtec", root / "screw" / "test")


def test_visa_loader(tmp_path):
    root = tmp_path / "visa"
    png(root / "candle/Data/Images/Normal/0000.JPG", np.zeros((8, 12, 3), np.uint8))
    png(root / "candle/Data/Images/Anomaly/0001.JPG", np.zeros((8, 12, 3), np.uint8))
    png(root / "candle/Data/Masks/Anomaly/0001.png", np.ones((8, 12), np.uint8))
    (root / "split_csv").mkdir()
    (root / "split_csv/1cls.csv").write_text(
        "object,split,label,image,mask\n"
        "candle,train,normal,candle/Data/Images/Normal/0000.JPG,\n"
        "candle,test,normal,candle/Data/Images/Normal/0000.JPG,\n"
        "candle,test,anomaly,candle/Data/Images/Anomaly/0001.JPG,candle/Data/Masks/Anomaly/0001.png\n"
    )
    items = load_dataset("visa", root)["candle"]
    assert [i.label for i in items] == [0, 1] and items[1].mask.name == "0001.png"


def test_folder_loader_and_mask_resize_warning(tmp_path):
    root = make_folder_dataset(tmp_path / "widget", masks=True)
    items = load_dataset("folder", root)["widget"]
    assert len(items) == 8 and sum(i.label for i in items) == 4
    # a mask of another size is resized (nearest) to its image, with one warning
    png(root / "masks/crack/000_mask.png", np.full((32, 32), 255, np.uint8))
    png(root / "masks/crack/001_mask.png", np.full((16, 16), 255, np.uint8))
    loader = MaskLoader()
    bad = [i for i in items if i.label][:2]
    with pytest.warns(UserWarning, match="resizing masks") as record:
        m0 = loader.load(bad[0], (24, 24))
        loader.load(bad[1], (24, 24))
    assert len(record) == 1 and m0.all()
    # a mask of another aspect ratio cannot be placed: an error in strict mode
    png(root / "masks/crack/001_mask.png", np.full((16, 8), 255, np.uint8))
    with pytest.raises(DatasetError, match="other aspect ratio"):
        MaskLoader().load(bad[1], (24, 24))
    with pytest.warns(UserWarning, match="stretching"):
        MaskLoader(strict=False).load(bad[1], (24, 24))
    (root / "masks/crack/002_mask.png").unlink()
    with pytest.raises(DatasetError, match="missing mask"):
        load_dataset("folder", root)


def test_mask_processing_binarise_resize_threshold(tmp_path):
    m = np.zeros((100, 100), np.uint8)
    m[:, :51] = 1  # values > 0 count as anomalous
    png(tmp_path / "m.png", m)
    png(tmp_path / "i.png", np.zeros((100, 100, 3), np.uint8))
    item = Item(tmp_path / "i.png", 1, tmp_path / "m.png", "x", "c")
    out = MaskLoader().load(item, (10, 10))
    assert out.dtype == bool and out[:, :5].all() and not out[:, 6:].any()


def test_subset_is_stratified():
    items = [Item(f"{k}", int(k >= 10), None, "d", "c") for k in range(30)]
    picked = subset(items, 6)
    assert len(picked) == 6 and sum(i.label for i in picked) == 3
    assert subset(items, None) == items


@pytest.fixture(scope="module")
def fast_detector(tiny_backbone):
    return Detector(backbone=tiny_backbone, image_score="cls", tta_steps=1, batch_size=4)


def test_evaluate_writes_tables_and_resumes(fast_detector, tmp_path):
    root = make_folder_dataset(tmp_path / "widget")
    opts = EvalOptions(dataset="folder", root=str(root))
    logs = []
    results = evaluate(fast_detector, opts, tmp_path / "ev", progress=False, log=logs.append)
    with open(tmp_path / "ev/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:8] == [
        "category",
        "image_auroc",
        "image_ap",
        "image_f1max",
        "pixel_auroc",
        "pixel_ap",
        "pixel_f1max",
        "aupro",
    ]
    assert list(rows[0])[8:] == list(LF_NAMES)  # the label-free decisions' rates
    assert [r["category"] for r in rows] == ["widget", "mean"]
    for key in rows[0]:
        if key.endswith("_normal"):  # no train/good in this folder: no known-good threshold
            assert rows[0][key] == "nan"
        elif key != "category":
            assert 0.0 <= float(rows[0][key]) <= 1.0
    with open(tmp_path / "ev/scores.csv") as f:
        scores = list(csv.DictReader(f))
    assert len(scores) == 8 and set(scores[0]) == {"category", "source", "label", "score"}
    labels = [int(s["label"]) for s in scores]
    auroc = roc_auc_score(labels, [float(s["score"]) for s in scores])
    assert float(rows[0]["image_auroc"]) == pytest.approx(auroc, abs=1e-6)
    assert "Random weights" in (tmp_path / "ev/metrics.md").read_text()
    # resume: the finished category is reused, not recomputed
    again = evaluate(fast_detector, opts, tmp_path / "ev", progress=False, log=logs.append)
    assert again[0].reused and "finished earlier" in logs[-1]
    assert again[0].metrics == results[0].metrics
    # other settings -> recomputed
    saved = json.loads((tmp_path / "ev/categories/widget.json").read_text())
    assert saved["fingerprint"]["settings"]["tta_steps"] == 1
    other = evaluate(
        fast_detector,
        EvalOptions("folder", str(root), tta=False),
        tmp_path / "ev",
        progress=False,
        log=logs.append,
    )
    assert not other[0].reused


def test_evaluate_without_masks_gives_nan_pixel_metrics(fast_detector, tmp_path):
    root = make_folder_dataset(tmp_path / "nomask", masks=False)
    res = evaluate(
        fast_detector,
        EvalOptions("folder", str(root)),
        tmp_path / "ev",
        progress=False,
        log=lambda m: None,
    )
    assert np.isnan(res[0].metrics.pixel_auroc) and not np.isnan(res[0].metrics.image_auroc)


def test_cli_evaluate_on_mvtec_subset(tiny_config, mvtec, tmp_path, capsys):
    extra = [*tiny_cli(tiny_config), "--limit", "6", "--set", "image_score=cls"]
    code = main(evaluate_two_categories(mvtec, tmp_path / "ev", *extra))
    assert code == 0
    text = (tmp_path / "ev/metrics.md").read_text()
    assert "| screw |" in text and "| transistor |" in text and "MuSc" in text
    with open(tmp_path / "ev/scores.csv") as f:
        assert len(list(csv.DictReader(f))) == 12


def test_cli_evaluate_unknown_layout_is_one_line(tmp_path, capsys):
    code = main(
        [
            "evaluate",
            "--dataset",
            "visa",
            "--root",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
            "--model",
            "ViT-B-99",
        ]
    )
    assert code == 2
    assert capsys.readouterr().err.strip().startswith("anoclip: error:")


def test_paper_table_code_path(tiny_config, mvtec, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("paper_table", REPO / "benchmarks/paper_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    code = module.main(
        [
            "--mvtec-root",
            str(mvtec),
            "--categories",
            "screw",
            "transistor",
            "--model",
            str(tiny_config),
            "--pretrained",
            "none",
            "--limit",
            "4",
            "--out",
            str(tmp_path / "pt"),
            "--quiet",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "anoclip (ours) mean" in out and "AnoVL official code re-run" in out


@pytest.mark.slow
def test_full_two_category_evaluation(tiny_config, mvtec, tmp_path):
    """The issue's 'done when' command: both shared categories in full (about 2 minutes)."""
    code = main(evaluate_two_categories(mvtec, tmp_path / "ev", *tiny_cli(tiny_config)))
    assert code == 0
    with open(tmp_path / "ev/scores.csv") as f:
        assert len(list(csv.DictReader(f))) == 260
