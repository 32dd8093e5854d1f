"""The HTML report, read back with the stdlib parser; pixel values checked against
hand-computed blends of the shared colour table; metrics against scikit-learn."""

from __future__ import annotations

import importlib.resources
import math
import re

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import f1_score, precision_score, recall_score

from anoclip.errors import AnoclipError, ReportError
from anoclip.results import report
from anoclip.results.overlays import FIXED_SCALE, calibrated_scale, colorize
from anoclip.threshold import Threshold, decide
from tests.report_dom import decode_data_uri, parse

# ---- helpers ---------------------------------------------------------------------------


def test_template_is_package_data():
    assert (importlib.resources.files("anoclip.results") / "templates" / "report.html.j2").is_file()


def test_ranked_highest_first_ties_by_name():
    rows = report.as_rows(
        [{"source": None, "name": n, "score": s} for n, s in [("b", 0.2), ("a", 0.9), ("c", 0.2)]]
    )
    assert [r.name for r in report.ranked(rows)] == ["a", "b", "c"]


def test_rows_reject_unknown_keys_and_bad_scores():
    with pytest.raises(ReportError, match="colour"):
        report.as_rows([{"source": None, "name": "a", "score": 1.0, "colour": "red"}])
    with pytest.raises(ReportError, match="not finite"):
        report.as_rows([{"source": None, "name": "a", "score": float("nan")}])


def test_truth_from_label_or_flag():
    row = report.ReportRow(None, "a", 0.1, label="good")
    assert row.truth is False
    assert report.ReportRow(None, "a", 0.1, label="scratch").truth is True
    assert report.ReportRow(None, "a", 0.1, label="good", anomalous=True).truth is True
    assert report.ReportRow(None, "a", 0.1).truth is None


def test_to_unit_and_quantise_hand_computed():
    v = report.to_unit(np.array([-0.5, 1.0, 2.0, 3.0, 5.0, 9.0]), 1.0, 5.0)
    assert v.tolist() == [0, 0, 0.25, 0.5, 1, 1]
    assert report.quantise(v).tolist() == [0, 0, 64, 128, 255, 255]  # 63.75, 127.5 (to even)


def test_run_scale_is_pooled_quantiles():
    rng = np.random.default_rng(0)
    maps = [rng.random((40, 30)) * (i + 1) for i in range(3)]
    lo, hi = report.run_scale([report.subsample(m) for m in maps], (0.5, 0.999))
    pooled = np.concatenate([m.ravel() for m in maps])  # maps ≤ 64 px: every pixel sampled
    assert (lo, hi) == pytest.approx((np.quantile(pooled, 0.5), np.quantile(pooled, 0.999)))
    assert report.run_scale([np.full(5, 2.0)], (0.5, 0.999)) == (2.0, 3.0)


def test_blend_hand_computed():
    rgb = np.full((1, 3, 3), 100, np.uint8)
    levels = np.array([[0, 255, 128]], np.uint8)
    out = report.blend(rgb, levels)
    lut = colorize(np.linspace(0, 1, 256)).astype(float)
    assert out[0, 0].tolist() == [100, 100, 100]
    for j, lev in ((1, 255), (2, 128)):
        a = 0.7 * min(1.0, 2 * lev / 255)  # alpha·min(1, 2v)
        expected = np.floor(100 * (1 - a) + lut[lev] * a + 0.5)
        assert out[0, j].tolist() == expected.tolist()


def test_outline_of_a_square_is_its_ring():
    m = np.zeros((7, 7), bool)
    m[1:6, 1:6] = True
    ring = report.outline(m)
    assert ring.sum() == 16 and ring[1, 1] and ring[5, 3] and not ring[3, 3]
    assert not report.outline(np.zeros((3, 3), bool)).any()


@pytest.mark.parametrize(
    ("lo", "hi", "ticks"),
    [(0, 1, [0, 0.25, 0.5, 0.75, 1]), (0.42, 0.87, [0.5, 0.6, 0.7, 0.8]), (0, 7, [0, 2, 4, 6])],
)
def test_nice_ticks(lo, hi, ticks):
    assert report.nice_ticks(lo, hi) == pytest.approx(ticks)


def test_histogram_counts_and_threshold_position():
    rng = np.random.default_rng(1)
    s = rng.random(200)
    truth = s + rng.normal(0, 0.2, 200) > 0.6
    h = report.histogram(s, truth, threshold=1.2, bins=10, width=500)
    lo, hi = s.min(), 1.2
    edges = lo + (hi - lo) * np.arange(11) / 10
    for group, want in (("normal", ~truth), ("anomalous", truth)):
        brute = [0] * 10  # by hand: the last bin is closed
        for v in s[want]:
            brute[min(9, int(np.searchsorted(edges, v, side="right")) - 1)] += 1
        got = [0] * 10
        for b in h["bars"]:
            if b["group"] == group:
                got[int(round((b["lo"] - lo) / (hi - lo) * 10))] = b["count"]
        assert got == brute
    plot = h["plot"]
    assert h["threshold"]["x"] == pytest.approx(plot["right"])  # t = max of the range
    assert h["threshold"]["anchor"] == "end"
    assert h["counts"] == {"normal": int((~truth).sum()), "anomalous": int(truth.sum())}


def test_tick_labels_tell_close_ticks_apart():
    """Scores within 1e-4 of each other: 0.501725 0.50175 ..., not 0.5017 0.5018 0.5018."""
    h = report.histogram([0.50171, 0.50175, 0.50183], threshold=None)
    labels = [t["label"] for t in h["xticks"]]
    assert len(labels) >= 3 and len(set(labels)) == len(labels), labels
    ticks = report.nice_ticks(0.50171, 0.50183)
    assert [float(t) for t in labels] == pytest.approx(ticks, abs=1e-12)
    assert [t for _, t in report.tick_labels([0, 0.25, 0.5, 0.75, 1])] == [
        "0", "0.25", "0.5", "0.75", "1",
    ]  # fmt: skip


@pytest.mark.parametrize(("t_px", "anchor"), [(0.003, "start"), (0.5, "middle"), (0.997, "end")])
def test_pixel_threshold_mark_stays_inside_the_colour_bar(tmp_path, t_px, anchor):
    """A pixel threshold near either end of the scale is anchored there, not cut off."""
    t = Threshold("normal", 0.35, t_px, {"false_reject": 0.01}, "0.1.0", {})
    html = report.write_report(tmp_path, _rows(), t, scale=(0.0, 1.0)).read_text()
    mark = r'<text class="mark" x="([\d.-]+)" y="44" text-anchor="(\w+)">([^<]*)<'
    marks = re.findall(mark, html)
    assert marks and all(a == anchor for _, a, _ in marks), marks
    for x, a, label in marks:
        assert "pixel defect bound" in label and "▲" in label
        width = len(label) * report.CHAR_WIDTH
        left = {"start": 0.0, "middle": width / 2, "end": width}[a]
        assert float(x) - left >= 0 and float(x) - left + width <= report.BAR_WIDTH, (x, label)


# ---- the page --------------------------------------------------------------------------


def _rows(n: int = 6, size=(40, 30)):
    """Rows over grey images (source None) with constant maps 0, 0.2, ..., 1.0."""
    w, h = size
    return [
        {
            "source": None,
            "name": f"img{i}",
            "score": 0.1 * i,
            "decision": "defect" if i >= 4 else "ok",
            "ratio": 0.1 * i / 0.35,
            "map": np.full((h, w), 0.2 * i, np.float32),
        }
        for i in range(n)
    ]


def test_cards_sorted_with_badges(tmp_path):
    t = Threshold("normal", 0.35, None, {"false_reject": 0.01}, "0.1.0", {})
    path = report.write_report(tmp_path, _rows(), t, {"model": "tiny"}, "Run")
    page = parse(path.read_text(encoding="utf-8"))
    assert len(page.cards) == 6
    scores = [float(c["data-score"]) for c in page.cards]
    assert scores == sorted(scores, reverse=True) and scores[0] == pytest.approx(0.5)
    assert [c["data-decision"] for c in page.cards] == ["defect"] * 2 + ["ok"] * 4
    assert "unsupervised" not in path.read_text()
    assert page.texts["count-shown"] == "6" and page.texts["count-defect"] == "2"
    assert "threshold-line" in page.ids and page.bars > 0
    assert page.texts["image-threshold"] == "0.350"


def test_unsupervised_flag_on_every_card(tmp_path):
    t = Threshold("unsupervised", 0.35, None, {"k": 3.5}, "0.1.0", {})
    page = parse(report.write_report(tmp_path, _rows(), t).read_text())
    assert "unsupervised-banner" in page.ids
    assert all("unsupervised" in text for text in page.card_texts)


def test_thumbnails_small_and_on_the_fixed_scale(tmp_path):
    """Constant maps: a per-image min-max stretch would make them all one colour."""
    path = report.write_report(
        tmp_path, _rows(size=(400, 300)), None, scale=(0.0, 1.0), image_format="png"
    )
    page = parse(path.read_text())
    lut = colorize(np.linspace(0, 1, 256)).astype(float)
    for uri in page.thumbs:
        assert decode_data_uri(uri).shape[:2] == (120, 160)  # 400×300 fitted into 160 px
    # card k shows the map 0.2·(5 − k): level round(255·v), blended over grey 128
    for k, uri in enumerate(page.thumbs):
        lev = int(np.rint(0.2 * (5 - k) * 255))
        a = 0.7 * min(1.0, 2 * lev / 255)
        want = np.floor(128 * (1 - a) + lut[lev] * a + 0.5)
        assert decode_data_uri(uri)[60, 80, :3].tolist() == want.tolist()


def test_detail_map_is_quantised_on_the_run_scale(tmp_path):
    rows = _rows()
    path = report.write_report(tmp_path, rows, None, scale=(0.2, 0.6))
    page = parse(path.read_text())
    details = page.json("details")
    conf = page.json("conf")
    assert (conf["lo"], conf["hi"]) == (0.2, 0.6)
    assert conf["lut"] == colorize(np.linspace(0, 1, 256)).tolist()
    for d in details:
        value = 0.2 * int(d["name"][3:])
        lev = np.clip(np.rint((value - 0.2) / 0.4 * 255), 0, 255)
        got = decode_data_uri(d["map"]).astype(float)
        assert abs(got.mean() - lev) <= 2  # lossy WebP of a flat image
        assert max(d["w"], d["h"]) <= 320


def test_default_scale_is_the_run_wide_quantiles(tmp_path):
    rng = np.random.default_rng(2)
    rows = [
        {"source": None, "name": f"r{i}", "score": float(i), "map": rng.random((30, 20)) * (i + 1)}
        for i in range(4)
    ]
    page = parse(report.write_report(tmp_path, rows).read_text())
    pooled = np.concatenate([r["map"].ravel() for r in rows])
    conf = page.json("conf")
    assert conf["lo"] == pytest.approx(np.quantile(pooled, 0.5))
    assert conf["hi"] == pytest.approx(np.quantile(pooled, 0.999))


def test_settings_are_escaped(tmp_path):
    evil = "<script>alert(1)</script>"
    path = report.write_report(tmp_path, _rows(2), None, {"note": evil, "nested": {"a": 1}}, evil)
    html = path.read_text()
    assert evil not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    page = parse(html)
    assert ["nested.a", "1"] in page.tables["settings"]
    assert ["note", evil] in page.tables["settings"]


def test_maps_from_npy_paths_and_real_images(tmp_path):
    img = tmp_path / "a.png"
    Image.fromarray(np.full((50, 60, 3), 200, np.uint8)).save(img)
    np.save(tmp_path / "a.npy", np.zeros((50, 60), np.float32))
    row = {"source": img, "name": "a", "score": 0.5, "map": tmp_path / "a.npy"}
    page = parse(report.write_report(tmp_path, [row], scale=(0, 1), image_format="png").read_text())
    assert decode_data_uri(page.thumbs[0])[10, 10, :3].tolist() == [200, 200, 200]  # level 0


def test_missing_map_is_a_report_error(tmp_path):
    row = {"source": None, "name": "a", "score": 0.5, "map": tmp_path / "absent.npy"}
    with pytest.raises(ReportError) as info:
        report.write_report(tmp_path, [row])
    assert isinstance(info.value, AnoclipError) and "\n" not in str(info.value)
    with pytest.raises(ReportError, match="no images"):
        report.write_report(tmp_path, [])


# ---- labelled mode ---------------------------------------------------------------------


def _labelled_rows(tmp_path, rng):
    rows = []
    for i in range(24):
        anomalous = i % 3 == 0
        gt = np.zeros((32, 32), bool)
        if anomalous:
            gt[8:20, 10:22] = True
        m = rng.random((32, 32)).astype(np.float32) * 0.5 + 0.45 * gt
        mask = None
        if anomalous:
            mask = tmp_path / f"m{i}.png"
            Image.fromarray(gt.astype(np.uint8) * 255).save(mask)
        score = float(m.max() + rng.normal(0, 0.15))
        rows.append(
            {
                "source": None,
                "name": f"i{i:02d}",
                "score": score,
                "decision": "defect" if score > 0.7 else "ok",
                "map": m,
                "mask": mask,
                "label": "crack" if anomalous else "good",
                "category": "a" if i < 12 else "b",
                "_gt": gt,
            }
        )
    return rows


def test_labelled_metrics_table_matches_sklearn(tmp_path):
    rng = np.random.default_rng(3)
    rows = _labelled_rows(tmp_path, rng)
    t = Threshold("normal", 0.7, 0.8, {}, "0.1.0", {})
    clean = [{k: v for k, v in r.items() if k != "_gt"} for r in rows]
    html = report.write_report(tmp_path, clean, t, scale=(0, 1)).read_text()
    assert 'data-filter="wrong"' in html
    page = parse(html)
    table = page.tables["metrics"]
    header = table[0]
    by_cat = {r[0]: dict(zip(header, r)) for r in table[1:]}
    assert set(by_cat) == {"a", "b", "all"}
    for cat in ("a", "b", "all"):
        sel = [r for r in rows if cat == "all" or r["category"] == cat]
        y = [r["label"] != "good" for r in sel]
        p = [r["decision"] == "defect" for r in sel]
        got = by_cat[cat]
        assert float(got["image precision"]) == pytest.approx(
            precision_score(y, p, zero_division=0), abs=5e-4
        )
        assert float(got["image recall"]) == pytest.approx(recall_score(y, p), abs=5e-4)
        assert float(got["image f1"]) == pytest.approx(f1_score(y, p), abs=5e-4)
        yp = np.concatenate([r["_gt"].ravel() for r in sel])
        pp = np.concatenate([(r["map"] > 0.8).ravel() for r in sel])
        assert float(got["pixel f1"]) == pytest.approx(f1_score(yp, pp), abs=5e-4)
        assert float(got["pixel recall"]) == pytest.approx(recall_score(yp, pp), abs=5e-4)
    wrong = sum(
        (r["label"] != "good") != (r["decision"] == "defect") for r in rows
    )  # fmt: skip
    assert sum(c["data-wrong"] == "1" for c in page.cards) == wrong
    assert wrong > 0 and int(page.texts["count-shown"]) == 24


def test_ground_truth_outline_in_thumbnail(tmp_path):
    gt = np.zeros((32, 32), bool)
    gt[8:24, 8:24] = True
    Image.fromarray(gt.astype(np.uint8) * 255).save(tmp_path / "m.png")
    row = {
        "source": None, "name": "a", "score": 1.0, "map": np.zeros((32, 32), np.float32),
        "mask": tmp_path / "m.png", "label": "crack",
    }  # fmt: skip
    page = parse(report.write_report(tmp_path, [row], scale=(0, 1), image_format="png").read_text())
    px = decode_data_uri(page.thumbs[0])[..., :3]
    green = np.all(px == [0, 255, 0], axis=-1)
    assert np.array_equal(green, report.outline(gt))  # 32 px: no resizing
    detail = page.json("details")[0]
    assert np.array_equal(decode_data_uri(detail["gt"]) > 127, report.outline(gt))


def test_caller_metrics_table_is_shown_verbatim(tmp_path):
    metrics = {"screw": {"image_auroc": 0.91, "f1": 0.5}, "transistor": {"image_auroc": 0.8}}
    page = parse(report.write_report(tmp_path, _rows(2), metrics=metrics).read_text())
    assert page.tables["metrics"][0] == ["category", "image auroc", "f1"]
    assert page.tables["metrics"][1] == ["screw", "0.910", "0.500"]
    assert page.tables["metrics"][2] == ["transistor", "0.800", ""]


# ---- masks -----------------------------------------------------------------------------


def test_write_mask(tmp_path):
    m = np.array([[0.1, 0.6], [0.5, 0.9]], np.float32)
    t = Threshold("normal", 0.5, 0.5, review_threshold=0.4, pixel_review=0.3)
    path = report.write_mask(tmp_path, "x", m, t, "ok")
    assert path == tmp_path / "masks" / "x.png"
    got = np.asarray(Image.open(path))
    assert got.dtype == np.uint8 and got.tolist() == [[0, 255], [0, 255]]  # ok: map > t_px_d
    got = np.asarray(Image.open(report.write_mask(tmp_path, "x", m, t, "review")))
    assert got.tolist() == [[0, 255], [255, 255]]  # review: map > t_px_r


def test_write_mask_at_the_image_size(tmp_path):
    m = np.zeros((4, 4), np.float32)
    m[:, 2:] = 1.0
    t = Threshold("normal", 0.5, 0.5)
    got = np.asarray(Image.open(report.write_mask(tmp_path, "y", m, t, "ok", size=(8, 6))))
    assert got.shape == (6, 8)
    assert got[:, 0].max() == 0 and got[:, -1].min() == 255
    assert not math.isnan(got.mean())


# ---- three decisions, the calibrated scale, masks, notes (issue 19) -------------------

BAND = Threshold(
    "normal", 0.5582938, 0.4, {"false_reject": 0.01, "confidence": 0.9, "n_normal": 20,
    "review_rate": 0.0476}, "0.1.0", {}, review_threshold=0.5123456, pixel_review=0.3,
    pixel_typical=0.2,
)  # fmt: skip


def _three(n: int = 12, size=(40, 30)):
    """Rows whose decisions come from BAND: scores spread over ok, review and defect."""
    w, h = size
    scores = np.linspace(0.45, 0.62, n)
    return [
        {"source": None, "name": f"s{i:02d}", "score": float(s), "decision": decide(s, BAND),
         "ratio": float(s) / BAND.image_threshold, "map": np.full((h, w), 0.1, np.float32)}
        for i, s in enumerate(scores)
    ]  # fmt: skip


def test_three_decisions_counted_filtered_and_explained(tmp_path):
    rows = _three()
    html = report.write_report(tmp_path, rows, BAND).read_text()
    page = parse(html)
    for decision in ("ok", "review", "defect"):
        want = sum(r["decision"] == decision for r in rows)
        assert want > 0 and page.texts[f"count-{decision}"] == str(want)
        assert f'data-filter="{decision}"' in html
        assert sum(c["data-decision"] == decision for c in page.cards) == want
    # highest first: defect cards, then review, then ok
    order = [c["data-decision"] for c in page.cards]
    assert order == sorted(order, key=["defect", "review", "ok"].index)
    assert all(c["class"].split() == ["card", c["data-decision"]] for c in page.cards)
    assert all(f'<span class="badge {c["data-decision"]}">' in html for c in page.cards)
    meaning = " ".join(page.texts["decisions"].split())
    assert "between clearly normal and the defect bound: a person should look" in meaning
    assert "score above the defect bound (0.558)" in meaning
    assert "at or below the review bound (0.512)" in meaning
    assert page.texts["review-threshold"] == "0.512"
    promise = " ".join(page.texts["promise"].replace("\xa0", " ").split())
    assert "at most 1 % (at 90 % confidence, from 20 known-good images)" in promise
    assert "about 5 % of good parts score above the review bound" in promise


def test_review_is_never_wrong(tmp_path):
    rows = [
        {"source": None, "name": "a", "score": 0.6, "decision": "review", "label": "good"},
        {"source": None, "name": "b", "score": 0.5, "decision": "review", "label": "crack"},
        {"source": None, "name": "c", "score": 0.4, "decision": "ok", "label": "crack"},
        {"source": None, "name": "d", "score": 0.7, "decision": "defect", "label": "good"},
    ]
    page = parse(report.write_report(tmp_path, rows, BAND).read_text())
    assert {c["id"]: c["data-wrong"] for c in page.cards} == {
        "card-0": "1", "card-1": "0", "card-2": "0", "card-3": "1",
    }  # fmt: skip


def test_no_review_button_without_a_band(tmp_path):
    t = Threshold("normal", 0.35, None, {}, "0.1.0", {})
    html = report.write_report(tmp_path, _rows(), t).read_text()
    page = parse(html)
    assert 'data-filter="review"' not in html
    assert not {"review-band", "review-line", "review-threshold"} & set(page.ids)
    assert "no review band" in page.texts["decisions"]
    assert page.texts["count-review"] == "0"


def _marks(html: str) -> list[tuple[float, str]]:
    """(bar position, label) of the head colour bar's marks (10 + pos·300 + dx = x)."""
    head = html.split('id="cb-head"')[1].split("</svg>")[0]
    found = re.findall(
        r'<text class="mark" x="([\d.-]+)" y="\d+" text-anchor="(\w+)">([^<]*)<', head
    )
    dx = {"start": -4, "middle": 0, "end": 4}
    return [((float(x) - 10 - dx[a]) / 300, label) for x, a, label in found]


def test_scale_is_calibrated_by_default(tmp_path):
    # typical 0.2, review 0.3: delta 0.1, lo = 0.2 - 0.1, hi = 0.2 + 3 * 0.1 (by hand)
    html = report.write_report(tmp_path, _rows(), BAND).read_text()
    conf = parse(html).json("conf")
    assert (conf["lo"], conf["hi"]) == pytest.approx((0.1, 0.5))
    assert "Anchored to the calibration" in html
    marks = _marks(html)
    assert [round(pos, 6) for pos, _ in marks] == [0.25, 0.5, 0.75]  # 0.4 = the defect bound
    assert [label.strip("▲ ") for _, label in marks] == [
        "typical normal max 0.200", "pixel review bound 0.300", "pixel defect bound 0.400",
    ]  # fmt: skip


def test_scale_fallbacks(tmp_path):
    rng = np.random.default_rng(4)
    rows = [{"source": None, "name": f"r{i}", "score": float(i), "map": rng.random((30, 20))}
            for i in range(3)]  # fmt: skip
    pooled = np.concatenate([r["map"].ravel() for r in rows])
    want = (np.quantile(pooled, 0.5), np.quantile(pooled, 0.999))
    old = Threshold("normal", 0.5, 0.7)  # a v1 file: no review bound, no typical maximum
    conf = parse(report.write_report(tmp_path, rows, old).read_text()).json("conf")
    assert (conf["lo"], conf["hi"]) == pytest.approx(want)
    conf = parse(report.write_report(tmp_path, rows, BAND, scale=FIXED_SCALE).read_text()).json(
        "conf"
    )
    assert (conf["lo"], conf["hi"]) == (0.0, 1.0)
    html = report.write_report(tmp_path, rows, BAND, scale=calibrated_scale(BAND)).read_text()
    assert "Anchored to the calibration" in html


def test_off_scale_mark_sits_at_the_end(tmp_path):
    t = Threshold("normal", 0.5, 0.9, review_threshold=0.4, pixel_review=0.3, pixel_typical=0.2)
    marks = _marks(report.write_report(tmp_path, _rows(), t).read_text())
    pos, label = marks[-1]
    assert pos == pytest.approx(1.0) and "pixel defect bound 0.900 (off scale)" in label


def test_histogram_known_good_series_and_review_band():
    rng = np.random.default_rng(5)
    scores, known = rng.normal(0.5, 0.05, 80), rng.normal(0.45, 0.02, 30)
    t_r, t_d = 0.52, 0.56
    h = report.histogram(scores, None, t_d, bins=12, review=t_r, normal_scores=known)
    lo = min(scores.min(), known.min(), t_r)
    hi = max(scores.max(), known.max(), t_d)
    brute = [0] * 12
    for v in known:
        brute[min(11, int((v - lo) / (hi - lo) * 12))] += 1
    assert h["known"]["counts"] == brute and h["known"]["total"] == 30
    plot = h["plot"]
    x = lambda v: plot["left"] + (v - lo) / (hi - lo) * (plot["right"] - plot["left"])  # noqa: E731
    assert h["band"]["x0"] == pytest.approx(x(t_r)) and h["band"]["x1"] == pytest.approx(x(t_d))
    assert h["review"]["label"] == "review bound 0.520"
    assert h["threshold"]["label"] == "defect bound 0.560"
    assert h["threshold"]["ty"] != h["review"]["ty"]
    # no outline along empty bins: one closed outline ("M ... V base") per run of bins
    runs = sum(1 for i, c in enumerate(brute) if c and (i == 0 or not brute[i - 1]))
    assert h["known"]["path"].count("M") == runs


def test_bound_labels_never_cross_the_other_line():
    for t_r, t_d in ((0.501, 0.502), (0.1, 0.9), (0.88, 0.9), (0.1, 0.12)):
        h = report.histogram(np.linspace(0.1, 0.9, 20), None, t_d, review=t_r)
        for mine, other in ((h["threshold"], h["review"]), (h["review"], h["threshold"])):
            width = len(mine["label"]) * report.CHAR_WIDTH
            x0 = mine["tx"] - (width if mine["anchor"] == "end" else 0)
            crosses = x0 <= other["x"] <= x0 + width
            assert not crosses or other["ty"] > mine["ty"], (t_r, t_d, mine, other)


def test_histogram_on_the_page(tmp_path):
    known = [0.47, 0.48, 0.49, 0.5]
    page = parse(report.write_report(tmp_path, _three(), BAND, normal_scores=known).read_text())
    assert {"review-band", "review-line", "threshold-line", "known-good"} <= set(page.ids)
    assert "known-good (4)" in page.texts["known-good-legend"]
    assert page.texts["threshold-label"] == "defect bound 0.558"
    assert page.texts["review-label"] == "review bound 0.512"


def test_three_significant_digits():
    assert [report.sig(v) for v in (0.35, 12.345, 0.000123456, 1234.5, 1.0)] == [
        "0.350", "12.3", "0.000123", "1.23e+03", "1.00",
    ]  # fmt: skip
    assert report.sig_labels([0.50171, 0.50183, None]) == ["0.5017", "0.5018", ""]
    assert report.sig_labels([0.5, 0.5]) == ["0.500", "0.500"]


def test_thresholds_in_the_table_and_cards_have_three_digits(tmp_path):
    rows = [{"source": None, "name": "a", "score": 0.612345, "decision": "defect"}]
    page = parse(report.write_report(tmp_path, rows, BAND).read_text())
    table = dict(r for r in page.tables["threshold"] if len(r) == 2)
    assert table["defect bound (image)"] == "0.558"
    assert table["review bound (image)"] == "0.512"
    assert table["pixel defect bound"] == "0.400"
    assert table["typical normal map maximum"] == "0.200"
    assert "score 0.612" in page.card_texts[0]


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Brute force: mask pixels on the picture's edge or with a 4-neighbour outside."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    for y in range(h):
        for x in range(w):
            if not mask[y, x]:
                continue
            near = [(y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)]
            out[y, x] = any(not (0 <= j < h and 0 <= i < w) or not mask[j, i] for j, i in near)
    return out


def _blob_map() -> np.ndarray:
    yy, xx = np.mgrid[0:32, 0:32]
    return (0.9 * np.exp(-((yy - 14) ** 2 + (xx - 18) ** 2) / 40.0)).astype(np.float32)


@pytest.mark.parametrize(("decision", "bound"), [("review", 0.3), ("defect", 0.3), ("ok", None)])
def test_flagged_thumbnail_carries_its_mask_outline(tmp_path, decision, bound):
    m = _blob_map()  # 32 px: thumbnail and view at the map's own size
    row = {"source": None, "name": "a", "score": 0.6, "decision": decision, "map": m}
    page = parse(report.write_report(tmp_path, [row], BAND, image_format="png").read_text())
    px = decode_data_uri(page.thumbs[0])[..., :3]
    magenta = np.all(px == [255, 0, 255], axis=-1)
    if bound is None:  # an ok image: no outline on its thumbnail
        assert not magenta.any()
    else:
        want = _boundary(m > bound)  # BAND's pixel review bound
        assert want.any() and np.array_equal(magenta, want)
    detail = page.json("details")[0]
    shown = m > (0.4 if bound is None else bound)  # ok: the pixel defect bound
    got = np.zeros_like(shown) if detail["pred"] is None else decode_data_uri(detail["pred"]) > 127
    assert np.array_equal(got, _boundary(shown))


def test_ratio_is_explained(tmp_path):
    html = report.write_report(tmp_path, _three(), BAND).read_text()
    page = parse(html)
    starts = 0.5123456 / 0.5582938
    note = f"score ÷ defect bound: above ×1 is a defect; the review band starts at ×{starts:.2f}"
    assert "×0.92" in note
    assert page.texts["ratio-note"].strip() == f"×ratio = {note}."
    titled = re.findall(r'<span class="nums" title="([^"]*)">', html)
    assert len(titled) == len(page.cards) and set(titled) == {note}
    no_band = Threshold("normal", 0.5)
    assert report.ratio_note(no_band) == "score ÷ defect bound: above ×1 is a defect"
    assert report.ratio_note(Threshold("normal", 0.0)) is None


def test_settings_shown_lists_only_what_the_run_used(tmp_path):
    info = {"model": "m", "seed": 0, "unused": None, "empty": "", "random_weights": False,
            "settings": {"a": 1, "b": 2, "c": None}}  # fmt: skip
    shown = ["model", "seed", "unused", "random_weights", "settings.a"]
    page = parse(
        report.write_report(tmp_path, _rows(2), None, info, settings_shown=shown).read_text()
    )
    assert page.tables["settings"] == [
        ["model", "m"], ["random_weights", "false"], ["seed", "0"], ["settings.a", "1"],
    ]  # fmt: skip
    assert page.texts["settings-hidden"].startswith("4 settings")  # unused empty b c
    page = parse(report.write_report(tmp_path, _rows(2), None, info).read_text())
    keys = [r[0] for r in page.tables["settings"]]
    assert keys == ["model", "random_weights", "seed", "settings.a", "settings.b"]
    rows, hidden = report.shown_settings({"settings": {"x": 1, "y": 2}}, ["settings"])
    assert rows == [("settings.x", "1"), ("settings.y", "2")] and hidden == 0


def test_unfamiliar_images_are_marked_and_counted(tmp_path):
    rows = _three(6)
    rows[0]["notes"] = ("unfamiliar",)
    rows[3]["notes"] = "slow; unfamiliar"
    rows[4]["notes"] = ("slow",)
    page = parse(report.write_report(tmp_path, rows, BAND).read_text())
    assert page.texts["count-unfamiliar"] == "2"
    marked = {c["id"] for c, t in zip(page.cards, page.card_texts) if "unlike the known-good" in t}
    flagged = {c["id"] for c in page.cards if c["data-unfamiliar"] == "1"}
    names = {c["id"]: d["name"] for c, d in zip(page.cards, page.json("details"))}
    assert marked == flagged and {names[i] for i in marked} == {"s00", "s03"}
    assert report.ReportRow(None, "x", 0.1, notes="a, unfamiliar").notes == ("a", "unfamiliar")
    no_notes = parse(report.write_report(tmp_path, _three(6), BAND).read_text())
    assert "count-unfamiliar" not in no_notes.ids


UNSUPERVISED = Threshold("unsupervised", 0.5582938, 0.4, {"k": 3.5}, "0.1.0", {})


def test_global_change_images_are_marked_counted_and_filtered(tmp_path):
    rows = _three(6)
    rows[1]["notes"] = ("global_change",)
    rows[4]["notes"] = "unfamiliar; global_change"
    rows[2]["notes"] = ("near_identical",)  # 1 of 6: a trusted set, and no global change
    html = report.write_report(tmp_path, rows, UNSUPERVISED).read_text()
    page = parse(html)
    assert page.texts["count-global"] == "2"
    assert 'data-filter="global"' in html and "Global change (2)</button>" in html
    marked = {c["id"] for c, t in zip(page.cards, page.card_texts) if "global change" in t}
    flagged = {c["id"] for c in page.cards if c["data-global"] == "1"}
    names = {c["id"]: d["name"] for c, d in zip(page.cards, page.json("details"))}
    assert marked == flagged and {names[i] for i in marked} == {"s01", "s04"}
    assert {d["name"] for d in page.json("details") if d["global_change"]} == {"s01", "s04"}
    chip = re.search(r'<span class="odd global" title="([^"]*)">global change</span>', html)
    assert chip and "whole image differs" in chip[1] and "patch differences only" in chip[1]
    assert "patch differences only" in page.texts["global-hint"]
    assert "v-global-row" in page.ids
    plain = parse(report.write_report(tmp_path, _three(6), UNSUPERVISED).read_text())
    assert "count-global" not in plain.ids and "global-hint" not in plain.ids
    assert all(c["data-global"] == "0" for c in plain.cards)
    assert not [t for t in plain.card_texts if "global change" in t]
    assert 'data-filter="global"' not in (tmp_path / "report.html").read_text()


def test_the_series_warning_does_not_ask_a_banked_run_for_its_bank(tmp_path):
    rows = _three(6)
    for k in (0, 2, 4):
        rows[k]["notes"] = ("near_identical",)
    info = {"decisions": {"threshold": "unsupervised", "normals_as_bank": 20}}
    page = parse(report.write_report(tmp_path, rows, UNSUPERVISED, info).read_text())
    said = " ".join(page.texts["series-warning"].split())
    assert "--normal" not in said and "already backs every score" in said
    assert "--mode anoclip" in said and "--mode anoclip" in page.texts["unsupervised-banner"]
    alone = parse(report.write_report(tmp_path, rows, UNSUPERVISED, {"seed": 0}).read_text())
    assert "--normal DIR" in alone.texts["series-warning"]
    assert "already backs" not in alone.texts["series-warning"]
    assert report.known_good_use(None, {"decisions.normals_as_bank": 3}) == "bank"
    assert report.known_good_use(None, {}, np.array([0.1, 0.2])) == "threshold"
    assert report.known_good_use(UNSUPERVISED, {"decisions": {"normals": 0}}) is None


def test_near_identical_images_are_marked_and_an_untrusted_set_says_so(tmp_path):
    rows = _three(6)
    for k in (0, 2):
        rows[k]["notes"] = ("near_identical",)
    page = parse(report.write_report(tmp_path, rows, BAND).read_text())
    # 2 of 6: a trusted set shows nothing (a natural twin is no reason to look)
    assert "series-warning" not in page.ids and "count-near" not in page.ids
    assert not [t for t in page.card_texts if "near-identical" in t]
    rows[4]["notes"] = ("unfamiliar", "near_identical")  # 3 of 6: at the bound
    page = parse(report.write_report(tmp_path, rows, UNSUPERVISED).read_text())
    # no known-good images in the run: a bank of them is the advice
    assert "series-warning" in page.ids and "--normal DIR" in page.texts["series-warning"]
    page = parse(report.write_report(tmp_path, rows, BAND).read_text())
    # BAND was calibrated on 20 known-good images: they are not asked for again
    assert "series-warning" in page.ids and "--normal" not in page.texts["series-warning"]
    assert "--mode anoclip" in page.texts["series-warning"]
    assert page.texts["count-near"] == "3"
    marked = {c["id"] for c, t in zip(page.cards, page.card_texts) if "near-identical" in t}
    flagged = {c["id"] for c in page.cards if c["data-near"] == "1"}
    names = {c["id"]: d["name"] for c, d in zip(page.cards, page.json("details"))}
    assert marked == flagged and {names[i] for i in marked} == {"s00", "s02", "s04"}
