"""Dual-image / mutual scoring, text-filtered references, fusion and synthesized anomalies."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from anoclip import Detector
from anoclip.cli import main
from anoclip.fusion import RunningMoments, fuse_maps, moments
from anoclip.references import aggregate, nn_distances, reference_sets, text_keep_mask
from anoclip.synth import MAX_AREA, MIN_AREA, perlin, perlin_mask, synthesize, token_labels

from ..conftest import evaluate_two_categories, tiny_cli


def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def brute_force(tokens, refs, how, keep=None):
    """Loops over every query patch, reference and reference patch."""
    n, length, _ = tokens.shape
    out = np.zeros((n, length))
    t = tokens.double().numpy()
    for i in range(n):
        for p in range(length):
            per_ref = []
            for r in refs[i].tolist():
                best = -1.0
                for j in range(length):
                    if keep is not None and not keep[r, j]:
                        continue
                    best = max(best, float(t[i, p] @ t[r, j]))
                per_ref.append(0.5 * (1 - best))
            per_ref.sort()
            if how == "interval_mean":
                out[i, p] = np.mean(per_ref[: math.ceil(0.3 * len(per_ref))])
            elif how == "min":
                out[i, p] = per_ref[0]
            else:
                out[i, p] = np.mean(per_ref)
    return out


@pytest.mark.parametrize("how", ["interval_mean", "min", "mean"])
@pytest.mark.parametrize("num_refs", ["all", 2, 1])
@pytest.mark.parametrize("reuse_bytes", [0, 2**20])  # each pair computed once, or per query
def test_nn_distances_match_brute_force(how, num_refs, reuse_bytes):
    g = torch.Generator().manual_seed(0)
    tokens = unit(torch.randn(6, 9, 5, generator=g))
    refs = reference_sets(torch.randn(6, 4, generator=g), torch.arange(6), num_refs)
    keep = torch.rand(6, 9, generator=g) > 0.3
    for k in (None, keep):
        want = brute_force(tokens, refs, how, k)
        got = nn_distances(  # 2 references per similarity chunk
            tokens, refs, how, k, chunk_elems=9 * 9 * 2, reuse_bytes=reuse_bytes
        ).numpy()
        assert np.abs(got - want).max() < 1e-6


def test_interval_mean_uses_ceiling():
    d = torch.tensor([[0.4, 0.1, 0.3]])  # R = 3 -> ⌈0.9⌉ = 1 smallest
    assert aggregate(d, "interval_mean").item() == pytest.approx(0.1)
    d = torch.arange(10.0).view(1, 10)  # R = 10 -> 3 smallest
    assert aggregate(d, "interval_mean").item() == pytest.approx(1.0)


def test_reference_sets():
    g = torch.Generator().manual_seed(1)
    cls = torch.randn(7, 8, generator=g)
    groups = torch.tensor([0, 0, 1, 2, 3, 4, 5])  # units 0 and 1 are tiles of one image
    sim = unit(cls) @ unit(cls).T
    nn = reference_sets(cls, groups, 1, "cls_nn")
    for i, r in enumerate(nn):
        allowed = [j for j in range(7) if groups[j] != groups[i]]
        assert int(r) == max(allowed, key=lambda j: float(sim[i, j]))
    every = reference_sets(cls, groups, "all")
    assert [len(r) for r in every] == [5, 5, 6, 6, 6, 6, 6]
    assert 1 not in every[0].tolist() and 0 not in every[0].tolist()
    knn = reference_sets(cls, groups, 3)
    assert all(len(r) == 3 for r in knn)
    with pytest.raises(ValueError):
        reference_sets(cls[:2], torch.tensor([0, 0]), 1)


@pytest.mark.parametrize("pairing", ["matching", "random"])
@pytest.mark.parametrize("n", [6, 7])
def test_dual_pairing_is_symmetric(pairing, n):
    cls = torch.randn(n, 8, generator=torch.Generator().manual_seed(n))
    partner = [
        int(r)
        for r in reference_sets(cls, torch.arange(n), 1, pairing, torch.Generator().manual_seed(3))
    ]
    assert all(partner[i] != i for i in range(n))
    asymmetric = [i for i in range(n) if partner[partner[i]] != i]
    assert len(asymmetric) == n % 2  # only the leftover of an odd count borrows a partner
    again = [
        int(r)
        for r in reference_sets(cls, torch.arange(n), 1, pairing, torch.Generator().manual_seed(3))
    ]
    assert again == partner  # seeded


def test_matching_pairs_most_similar_first():
    cls = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [0.1, 0.99]])
    partner = [int(r) for r in reference_sets(cls, torch.arange(4), 1, "matching")]
    assert partner == [1, 0, 3, 2]


def planted_tokens(seed=0, n=5, length=16, dim=12):
    """Normal patches come from a few shared 'textures'; query 0, patch 5 is foreign."""
    g = torch.Generator().manual_seed(seed)
    textures = unit(torch.randn(4, dim, generator=g))
    pick = torch.randint(0, 4, (n, length), generator=g)
    tokens = textures[pick] + 0.05 * torch.randn(n, length, dim, generator=g)
    defect = unit(torch.randn(dim, generator=g))
    tokens[0, 5] = defect
    return unit(tokens), defect


def test_planted_anomaly_gets_the_top_score():
    tokens, _ = planted_tokens()
    refs = reference_sets(torch.randn(5, 3), torch.arange(5), "all")
    d = nn_distances(tokens, refs, "interval_mean")
    assert int(d[0].argmax()) == 5
    assert float(d[0, 5]) > 2 * float(d[0, torch.arange(16) != 5].max())
    pair = nn_distances(tokens, reference_sets(torch.randn(5, 3), torch.arange(5), 1), "min")
    assert int(pair[0].argmax()) == 5


def test_text_filter_removes_an_anomalous_reference():
    tokens, defect = planted_tokens(1)
    tokens[1, 9] = defect  # reference 1 has the very same defect: it explains it away
    refs = [torch.tensor([1])] + [torch.tensor([0])] * 4
    unfiltered = nn_distances(tokens, refs, "min")
    assert float(unfiltered[0, 5]) < 1e-6
    text_probs = torch.full((5, 16), 0.2)
    text_probs[1, 9] = 0.9  # the text branch flags the reference's defect patch
    keep = text_keep_mask(text_probs, 0.9)
    assert not keep[1, 9] and keep.sum() == 5 * 16 - 1
    filtered = nn_distances(tokens, refs, "min", keep)
    assert int(filtered[0].argmax()) == 5
    assert float(filtered[0, 5]) > 5 * float(filtered[0, torch.arange(16) != 5].max())


def test_fusion():
    t = torch.rand(2, 4, 4)
    v = torch.rand(2, 4, 4)
    assert torch.allclose(fuse_maps(t, v, "linear", 0.25), 0.25 * t + 0.75 * v)
    h = fuse_maps(t, v, "harmonic", 0.5)
    assert torch.allclose(h, 2 * t * v / (t + v), atol=1e-5)
    z = fuse_maps(t, v, "batch_z", 0.5)
    assert z.min() >= 0 and z.max() <= 1
    run = RunningMoments()
    for part in t.split(1):
        run.add(part)
    assert run.result()[0] == pytest.approx(moments(t)[0]) and run.result()[1] == pytest.approx(
        moments(t)[1]
    )


def test_synthesized_masks_are_within_bounds_and_seeded():
    noise = perlin((64, 64), (4, 4), torch.Generator().manual_seed(0))
    assert noise.abs().max() <= 1.5 and noise.std() > 0.1
    for seed in range(20):
        mask = perlin_mask((240, 240), (15, 15), torch.Generator().manual_seed(seed))
        area = float(mask.mean())
        assert MIN_AREA <= area <= MAX_AREA or abs(area - math.pi * 0.18 * 0.09) < 0.01
        assert token_labels(mask, (15, 15)).sum() >= 1
    x = torch.rand(3, 240, 240)
    a = synthesize(x, (15, 15), torch.Generator().manual_seed(5))
    b = synthesize(x, (15, 15), torch.Generator().manual_seed(5))
    assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask)
    assert a.image.min() >= 0 and a.image.max() <= 1
    inside = a.mask.bool()
    assert torch.equal(a.image[:, ~inside], x[:, ~inside])  # untouched outside the mask
    assert (a.image[:, inside] - x[:, inside]).abs().mean() > 0.01
    assert a.labels.shape == (225,) and a.labels.sum() >= 1


@pytest.fixture(scope="module")
def set_of_images(mvtec):
    import glob

    return sorted(glob.glob(str(mvtec / "screw/test/*/*.png")))[::20][:6]


@pytest.mark.parametrize(
    "mode,tta,refs", [("dual", "synth", None), ("mutual", "noise", None), ("mutual", "both", 2)]
)
def test_modes_end_to_end(tiny_backbone, set_of_images, mode, tta, refs):
    det = Detector(backbone=tiny_backbone, image_score="cls", tta_steps=2, batch_size=4)
    preds = det.predict(set_of_images, "screw", tta=tta, mode=mode, refs=refs)
    again = det.predict(set_of_images, "screw", tta=tta, mode=mode, refs=refs)
    assert [p.source for p in preds] == set_of_images
    for p, q in zip(preds, again):
        assert p.anomaly_map.shape == (1024, 1024) and p.anomaly_map.dtype == np.float32
        assert 0 <= p.anomaly_map.min() <= p.anomaly_map.max() <= 1 and 0 <= p.score <= 1
        assert np.array_equal(p.anomaly_map, q.anomaly_map) and p.score == q.score


def test_text_filter_and_other_fusions_run(tiny_backbone, set_of_images):
    for fusion in ("harmonic", "batch_z"):
        det = Detector(
            backbone=tiny_backbone,
            image_score="cls",
            tta_steps=1,
            ref_filter="text",
            fusion=fusion,
            ref_features="ori",
            ref_layers=(6, 12),
        )
        preds = det.predict(set_of_images[:3], "screw", tta="none", mode="mutual")
        assert all(0 <= p.score <= 1 for p in preds)


def test_single_image_falls_back_with_warning(tiny_backbone, set_of_images):
    det = Detector(backbone=tiny_backbone, image_score="cls", tta_steps=1)
    with pytest.warns(UserWarning, match="at least two images"):
        (pred,) = det.predict(set_of_images[:1], "screw", mode="dual")
    (plain,) = det.predict(set_of_images[:1], "screw")
    assert np.array_equal(pred.anomaly_map, plain.anomaly_map)


def test_bad_mode_arguments(tiny_backbone):
    det = Detector(backbone=tiny_backbone)
    for kwargs in (
        {"mode": "pairs"},
        {"mode": "dual", "refs": 3},
        {"refs": 2},
        {"mode": "mutual", "refs": 0},
        {"tta": "noisy"},
    ):
        with pytest.raises(ValueError):
            det.predict(np.zeros((8, 8, 3), np.uint8), "x", **kwargs)


def test_evaluate_runs_all_modes(tiny_config, mvtec, tmp_path):
    for mode, tta in (("anoclip", "noise"), ("dual", "synth"), ("mutual", "noise")):
        out = tmp_path / mode
        extra = ["--limit", "6", "--mode", mode, "--tta", tta, "--set", "image_score=cls",
                 "--set", "tta_steps=1"]  # fmt: skip
        code = main(evaluate_two_categories(mvtec, out, *tiny_cli(tiny_config), *extra))
        assert code == 0
        with open(out / "metrics.csv") as f:
            assert [r["category"] for r in csv.DictReader(f)] == ["screw", "transistor", "mean"]
        tag = {"anoclip": "TF-1IMG", "dual": "PAIR", "mutual": "BATCH"}[mode]
        assert f"**{tag}+TTA({tta})**" in (out / "metrics.md").read_text()


def test_detect_cli_mutual(tiny_config, set_of_images, tmp_path):
    out = tmp_path / "o"
    options = ["--object", "screw", "--out", str(out), *tiny_cli(tiny_config), "--mode",
               "mutual", "--refs", "1", "--no-tta", "--set", "image_score=cls"]  # fmt: skip
    code = main(["detect", *set_of_images[:3], *options])
    assert code == 0
    with open(out / "scores.csv") as f:
        assert len(list(csv.DictReader(f))) == 3
