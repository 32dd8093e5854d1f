"""Normal-feature banks: exact chunked search, save/reload, refusal of other settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anoclip.errors import AnoclipError, BankError
from anoclip.references.bank import BankMeta, NormalBank, combine, nearest_distance


def _unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(*shape, generator=g), dim=-1)


def _meta(**over) -> BankMeta:
    base = dict(
        backbone="timm:tf_efficientnet_lite0",
        layers=(2, 3),
        radii=(1, 3),
        grid=(4, 4),
        fingerprint={"image_size": 240, "mean": [0.5, 0.5, 0.5]},
    )
    return BankMeta(**{**base, **over})


def _features(n, seed):
    return {
        (layer, r): _unit(n, 16, c, seed=seed + 10 * layer + r)
        for layer, c in ((0, 5), (1, 7))
        for r in (1, 3)
    }


def test_nearest_distance_equals_brute_force_for_every_chunking():
    q, b = _unit(37, 6, seed=1), _unit(53, 6, seed=2)
    want = np.array([min(0.5 * (1 - float(qi @ bj)) for bj in b) for qi in q])
    for chunk in (1, 7, 53, 60, 10**6):
        np.testing.assert_allclose(nearest_distance(q, b, chunk).numpy(), want, atol=1e-6)


def test_bank_scores_are_the_mean_over_sets_of_brute_force_minima():
    normal, query = _features(3, 0), _features(2, 100)
    bank = NormalBank.build(normal, _meta())
    assert bank.size == 3 * 16
    got = bank.scores(query, chunk_elems=50)
    want = np.zeros((2, 16))
    for k, q in query.items():
        flat = normal[k].reshape(-1, normal[k].shape[-1])
        for i in range(2):
            for p in range(16):
                want[i, p] += min(0.5 * (1 - float(q[i, p] @ m)) for m in flat) / len(query)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6)


def test_bank_with_the_query_itself_scores_zero_and_add_appends():
    normal = _features(2, 0)
    bank = NormalBank.build({k: v[:1] for k, v in normal.items()}, _meta())
    bank.add({k: v[1:] for k, v in normal.items()})
    assert bank.size == 32
    assert float(bank.scores(normal).abs().max()) < 1e-6


def test_save_and_reload_give_identical_scores(tmp_path):
    bank = NormalBank.build(_features(3, 0), _meta())
    path = tmp_path / "normal.bank"
    bank.save(path)
    again = NormalBank.load(path, expect=_meta())
    assert again.meta == bank.meta
    query = _features(2, 7)
    assert torch.equal(bank.scores(query), again.scores(query))


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"backbone": "timm:resnet18"}, "backbone timm:tf_efficientnet_lite0 vs timm:resnet18"),
        ({"layers": (1, 2)}, "layers [2, 3] vs [1, 2]"),
        ({"radii": (1, 3, 5)}, "radii [1, 3] vs [1, 3, 5]"),
        ({"fingerprint": {"image_size": 256, "mean": [0.5, 0.5, 0.5]}}, "fingerprint.image_size"),
        ({"fingerprint": {"image_size": 240}}, "fingerprint.mean [0.5, 0.5, 0.5] vs <absent>"),
    ],
)
def test_mismatch_is_refused_naming_the_field(tmp_path, change, named):
    path = tmp_path / "normal.bank"
    NormalBank.build(_features(1, 0), _meta()).save(path)
    with pytest.raises(BankError) as err:
        NormalBank.load(path, expect=_meta(**change))
    assert isinstance(err.value, AnoclipError)
    assert named in str(err.value) and "\n" not in str(err.value)


def test_several_differences_are_all_named(tmp_path):
    path = tmp_path / "normal.bank"
    NormalBank.build(_features(1, 0), _meta()).save(path)
    with pytest.raises(BankError, match=r"backbone .*; grid \[4, 4\] vs \[8, 8\]"):
        NormalBank.load(path, expect=_meta(backbone="timm:x", grid=(8, 8)))


def test_unreadable_or_foreign_files_and_wrong_sets_are_one_line_errors(tmp_path):
    with pytest.raises(BankError, match="not found"):
        NormalBank.load(tmp_path / "none.bank")
    junk = tmp_path / "junk.bank"
    junk.write_bytes(b"not a bank")
    with pytest.raises(BankError, match="not an anoclip bank: not a PyTorch file") as err:
        NormalBank.load(junk)
    assert "weights_only" not in str(err.value) and "\n" not in str(err.value)
    other = tmp_path / "other.bank"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(BankError, match="not an anoclip bank"):
        NormalBank.load(other)
    with pytest.raises(BankError, match="do not match"):
        NormalBank.build(_features(1, 0), _meta(radii=(1,)))
    bank = NormalBank.build(_features(1, 0), _meta())
    with pytest.raises(BankError, match="do not match"):
        bank.scores({(0, 1): _unit(1, 16, 5)})


def test_concat_bank_keys():
    meta = _meta(fusion="concat")
    assert meta.keys() == [(-1, 1), (-1, 3)]
    feats = {(-1, r): _unit(2, 16, 12, seed=r) for r in (1, 3)}
    assert NormalBank.build(feats, meta).scores(feats).abs().max() < 1e-6


def test_combine():
    m, b = torch.tensor([0.1, 0.5]), torch.tensor([0.3, 0.2])
    assert combine(m, b, "mean").tolist() == pytest.approx([0.2, 0.35])
    assert combine(m, b, "min").tolist() == pytest.approx([0.1, 0.2])
    assert combine(m, b, "max").tolist() == pytest.approx([0.3, 0.5])
    with pytest.raises(ValueError):
        combine(m, b, "sum")


def test_leave_out_equals_a_bank_built_without_that_image():
    feats = _features(5, seed=3)  # 5 images of 16 patches (the meta's 4×4 grid)
    bank = NormalBank.build(feats, _meta())
    assert bank.num_images == 5
    query = _features(2, seed=9)
    for i in range(5):
        others = {k: torch.cat([v[:i], v[i + 1 :]]) for k, v in feats.items()}
        want = NormalBank.build(others, _meta()).scores(query)
        torch.testing.assert_close(bank.leave_out(i).scores(query), want, rtol=0, atol=0)
    # an image scored against the bank without itself is not at distance 0
    own = {k: v[2:3] for k, v in feats.items()}
    assert float(bank.scores(own).max()) < 1e-6 < float(bank.leave_out(2).scores(own).min())
    with pytest.raises(IndexError):
        bank.leave_out(5)


def _big_bank(m=60_000, c=8):
    feats = {(-1, 1): _unit(1, m, c, seed=5)}
    return NormalBank.build(feats, _meta(layers=(0,), radii=(1,), grid=(1, m), fusion="concat"))


def test_ivf_search_probing_every_list_equals_exact_search():
    pytest.importorskip("faiss")
    from anoclip.references.bank import build_ivf

    bank = _big_bank()
    query = {(-1, 1): _unit(2, 50, 8, seed=6)}
    exact = bank.scores(query)
    nlist = build_ivf(bank.features[(-1, 1)]).nlist
    torch.testing.assert_close(bank.scores(query, search="ivf", nprobe=nlist), exact,
                               rtol=0, atol=1e-6)  # fmt: skip
    approx = bank.scores(query, search="ivf", nprobe=8)  # approximate: never below exact
    assert bool((approx >= exact - 1e-6).all())


def test_small_banks_stay_exact_and_a_missing_faiss_names_the_extra(monkeypatch):
    import sys

    from anoclip.extras import MissingExtraError

    bank = NormalBank.build(_features(3, seed=3), _meta())  # 48 patches: exact even with ivf
    query = _features(2, seed=9)
    monkeypatch.setitem(sys.modules, "faiss", None)  # as if not installed
    torch.testing.assert_close(bank.scores(query, search="ivf"), bank.scores(query))
    with pytest.raises(MissingExtraError, match=r"anoclip\[ann\]"):
        _big_bank().scores({(-1, 1): _unit(1, 4, 8, seed=7)}, search="ivf")


def test_a_leave_one_out_copy_uses_the_whole_banks_profile():
    """Calibration scores a copy first (--normal --mode anoclip): its profile must be the
    whole bank's, whichever is scored first (references/profile.py)."""
    from anoclip.references.profile import bank_profile
    from anoclip.settings import Settings

    g = torch.Generator().manual_seed(0)
    feats = {(-1, 1): torch.nn.functional.normalize(torch.randn(5, 4, 8, generator=g), dim=-1)}
    meta = BankMeta("timm:x", (8,), (1,), (2, 2), {"object": "o"}, "concat")
    stats = torch.nn.functional.normalize(torch.randn(5, 6, generator=g), dim=-1)
    s = Settings(visual_backbone="timm:tf_efficientnet_lite0", fusion="visual")
    first = NormalBank.build(feats, meta, stats=stats)
    via_copy = bank_profile(first.leave_out(0), s, (8, 8))
    second = NormalBank.build(feats, meta, stats=stats)
    direct = bank_profile(second, s, (8, 8))
    assert via_copy.patches.shape == (5, 4)  # all five images, each left out once
    assert torch.equal(via_copy.patches, direct.patches)
    assert np.array_equal(via_copy.glob, direct.glob)
