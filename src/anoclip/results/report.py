"""One self-contained ``report.html`` of a run: ranked images, heat maps, decisions.

    OUT/report.html     opens offline; every image is inlined (base64)
    OUT/masks/NAME.png  binary defect masks (map > pixel threshold), see :func:`write_mask`

The page lists the images by score, highest first, as cards with a heat-map thumbnail and a
decision badge: ok (green, score ≤ the review bound t_r), review (amber, t_r < score ≤ the
defect bound t_d: a person should look) or defect (red, score > t_d), flagged
"unsupervised" when the threshold came from the unlabeled set, "unlike the known-good
images" for rows noted "unfamiliar" and "global change" for rows noted "global_change" (the
whole image differs from the normal ones; the map shows patch differences only). A flagged
image's thumbnail carries the outline of its decision's mask
(:func:`anoclip.threshold.defect_mask`, magenta). Above the cards: what each decision means
and promises, a histogram of the scores (the known-good images' scores
as an outline, the review band shaded, both bounds labelled; inline SVG), the colour scale
and the run settings. Buttons filter by decision; clicking a card opens the image, its
overlay and the raw map with the colour scale, score, ratio score ÷ t_d and decision (arrow
keys step through). ``report.html#filter=review`` and ``report.html#view=3`` open a filter /
the 4th card. Thresholds read with 3 significant digits (more only where two different
bounds would otherwise read alike).

**Colour scale.** Every map is drawn on ONE scale shared by the whole run: values are
mapped to v = clip((m − lo)/(hi − lo), 0, 1) and coloured with the "jet" map of
:mod:`anoclip.results.overlays`. [lo, hi] is, in this order: the caller's `scale`; else,
for a threshold with a pixel review bound and a typical normal maximum,
:func:`anoclip.results.overlays.calibrated_scale` (the overlays' scale: the typical normal
maximum at 1/4 of the bar, the pixel review bound at 1/2); else the run-wide 50 % and
99.9 % quantiles of all map pixels (subsampled), so the typical normal surface is dark and
only the hottest pixels of the run reach red. There is never a per-image min-max stretch:
the same colour means the same value on every image, and the colour bar (with the pixel
bounds marked) gives the values. Overlays blend the colour in with opacity 0.7·v, so the
product stays visible where the map is low.

**Size.** Thumbnails are WebP (≤ ``thumb_px``, default 160 px); the enlarged view keeps the
image at ≤ ``view_px`` (320 px) and the map quantised to 8 bits on the run scale at
≤ ``map_px`` (192 px, smoothed up by the browser), all inlined and decoded only when
opened. Thumbnails load lazily and off-screen cards are not laid out
(``content-visibility: auto``), so 1,000 images stay usable.

**Labelled mode** (``anoclip evaluate``): rows with ``anomalous`` (or a ``label``, "good"
meaning normal) and optional ground-truth ``mask`` paths get the mask outline drawn over
the maps (green), a "wrong" filter (a defect call on a normal image, an ok call on an
anomalous one; "review" asks a person and is never wrong), and a per-category table of
precision / recall / F1 / false-reject rate of the label-free threshold, image- and
pixel-level (or the caller's own ``metrics`` table).
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment, PackageLoader
from PIL import Image
from scipy import ndimage

from anoclip.data.images import load_rgb
from anoclip.decide.calibrate import Counts, confusion
from anoclip.errors import ImageDecodeError, ReportError
from anoclip.notes import GLOBAL_CHANGE, NEAR_IDENTICAL, UNFAMILIAR, series_untrusted
from anoclip.results.overlays import (
    FIXED_SCALE,
    OPACITY_RAMP,
    OVERLAY_ALPHA,
    calibrated_scale,
    colorize,
    opacity,
)
from anoclip.threshold import Threshold, defect_mask

REPORT = "report.html"
MASKS = "masks"
LUT = colorize(np.linspace(0.0, 1.0, 256))  # uint8 [256, 3], shared with the page's script
GT_COLOUR = (0, 255, 0)
PRED_COLOUR = (255, 0, 255)  # the decision's mask: magenta, a colour "jet" never draws
NORMAL_LABELS = ("good", "normal", "ok")
FLAGGED = ("review", "defect")
SIG_DIGITS = 3  # significant digits of the thresholds on the page
MapInput = np.ndarray | str | os.PathLike


@dataclass
class ReportRow:
    """One image of the report.

    source: the image file (or None: the map is shown on a grey background);
    map: float32 anomaly map at the image's size, or the path of its .npy;
    decision: "ok" / "review" / "defect" (or None without a threshold);
    ratio: score / defect bound; notes: what makes the score doubtful, e.g. "unfamiliar"
    (a string is split at ";" and ","); label, anomalous, mask, category: ground truth,
    for labelled mode.
    """

    source: str | os.PathLike | None
    name: str
    score: float
    decision: str | None = None
    ratio: float | None = None
    map: MapInput | None = None
    mask: str | os.PathLike | None = None
    label: str | None = None
    anomalous: bool | None = None
    category: str | None = None
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        notes = self.notes
        if notes is None:
            notes = ()
        elif isinstance(notes, str):
            notes = notes.replace(",", ";").split(";")
        self.notes = tuple(n.strip() for n in notes if n and n.strip())

    @property
    def unfamiliar(self) -> bool:
        return UNFAMILIAR in self.notes

    @property
    def near_identical(self) -> bool:
        return NEAR_IDENTICAL in self.notes

    @property
    def global_change(self) -> bool:
        return GLOBAL_CHANGE in self.notes

    @property
    def truth(self) -> bool | None:
        """Ground truth: anomalous if given, else from the label ("good" is normal)."""
        if self.anomalous is not None:
            return bool(self.anomalous)
        if self.label is None:
            return None
        return self.label.lower() not in NORMAL_LABELS


# ---------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------


def as_rows(rows: Iterable[ReportRow | Mapping[str, Any]]) -> list[ReportRow]:
    """ReportRow records from rows or mappings with the same keys."""
    names = {f.name for f in fields(ReportRow)}
    out = []
    for row in rows:
        if isinstance(row, ReportRow):
            out.append(row)
            continue
        unknown = set(row) - names
        if unknown:
            raise ReportError(f"unknown report row keys: {', '.join(sorted(unknown))}")
        out.append(ReportRow(**row))
    for row in out:
        if not math.isfinite(float(row.score)):
            raise ReportError(f"{row.name}: score is not finite ({row.score})")
    return out


def ranked(rows: Sequence[ReportRow]) -> list[ReportRow]:
    """Rows by score, highest first (ties by name)."""
    return sorted(rows, key=lambda r: (-float(r.score), r.name))


def load_map(item: MapInput) -> np.ndarray:
    """A float32 map from an array or a .npy path (ReportError if unusable)."""
    if isinstance(item, (str, os.PathLike)):
        try:
            item = np.load(item)
        except (OSError, ValueError) as e:
            raise ReportError(f"{item}: cannot read anomaly map ({type(e).__name__})") from e
    arr = np.asarray(item, dtype=np.float32)
    if arr.ndim != 2 or arr.size == 0:
        raise ReportError(f"anomaly map must be a non-empty H×W array, got shape {arr.shape}")
    return arr


def subsample(values: np.ndarray, side: int = 64) -> np.ndarray:
    """About side² pixels of a map, on a regular grid (for run-wide quantiles)."""
    sy = max(1, values.shape[0] // side)
    sx = max(1, values.shape[1] // side)
    return values[::sy, ::sx].ravel()


def run_scale(samples: Sequence[np.ndarray], quantiles: tuple[float, float]) -> tuple[float, float]:
    """(lo, hi) = run-wide quantiles of the pooled map samples; hi > lo guaranteed."""
    pooled = np.concatenate([np.asarray(s, dtype=np.float64).ravel() for s in samples])
    pooled = pooled[np.isfinite(pooled)]
    if pooled.size == 0:
        return 0.0, 1.0
    lo, hi = (float(q) for q in np.quantile(pooled, quantiles))
    if hi <= lo:
        lo, hi = float(pooled.min()), float(pooled.max())
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def report_scale(
    rows: Sequence[ReportRow],
    threshold: Threshold | None,
    scale: tuple[float, float] | None,
    quantiles: tuple[float, float],
) -> tuple[float, float, str]:
    """(lo, hi, kind) of the run's colour scale: the caller's `scale` ("fixed" for
    FIXED_SCALE, "calibrated" when it is the threshold's calibrated scale, else "given");
    else the threshold's :func:`calibrated_scale` when it has a pixel review bound and a
    typical normal maximum ("calibrated"); else the run-wide `quantiles` ("quantiles")."""
    calibrated = calibrated_scale(threshold) if _has_calibrated_scale(threshold) else None
    if scale is not None:
        lo, hi = float(scale[0]), float(scale[1])
        given = (lo, hi)
        kind = (
            "calibrated"
            if calibrated is not None and given == calibrated
            else "fixed"
            if given == FIXED_SCALE
            else "given"
        )
    elif calibrated is not None:
        (lo, hi), kind = calibrated, "calibrated"
    else:
        samples = [subsample(load_map(r.map)) for r in rows if r.map is not None]
        lo, hi = run_scale(samples, quantiles) if samples else (0.0, 1.0)
        kind = "quantiles" if samples else "fixed"
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ReportError(f"map scale must be two finite values lo < hi, got {(lo, hi)}")
    return lo, hi, kind


def _has_calibrated_scale(threshold: Threshold | None) -> bool:
    """Whether :func:`calibrated_scale` is anchored to the threshold (not its fallback)."""
    typical = getattr(threshold, "pixel_typical", None)
    review = getattr(threshold, "pixel_review", None)
    return typical is not None and review is not None and review > typical


def to_unit(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """v = clip((m − lo)/(hi − lo), 0, 1) on the run's fixed scale (float32)."""
    return np.clip((np.asarray(values, np.float32) - lo) / (hi - lo), 0.0, 1.0)


def quantise(v: np.ndarray) -> np.ndarray:
    """[0, 1] -> uint8 levels round(255·v): what the page's colour table indexes."""
    return np.rint(np.clip(v, 0.0, 1.0) * 255).astype(np.uint8)


def blend(rgb: np.ndarray, levels: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Overlay = rgb·(1 − a) + LUT[level]·a with a = opacity(level/255) (uint8 H×W×3)."""
    a = opacity(levels.astype(np.float32) / 255.0, alpha)[..., None]
    mixed = rgb.astype(np.float32) * (1.0 - a) + LUT[levels].astype(np.float32) * a
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


def outline(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a binary mask: mask ∧ ¬erode(mask) (bool)."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return m
    return m & ~ndimage.binary_erosion(m, border_value=0)


def paint(rgb: np.ndarray, where: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """rgb with the pixels `where` set to `colour` (a copy)."""
    out = rgb.copy()
    out[where] = colour
    return out


def resize_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map to size = (width, height)."""
    if values.shape[::-1] == tuple(size):
        return values.astype(np.float32, copy=False)
    img = Image.fromarray(values.astype(np.float32, copy=False))
    return np.asarray(img.resize(size, Image.BILINEAR), dtype=np.float32)


def fit_size(size: tuple[int, int], longest: int) -> tuple[int, int]:
    """(w, h) scaled so that max(w, h) ≤ longest, keeping the aspect ratio."""
    w, h = size
    s = min(1.0, longest / max(w, h))
    return max(1, round(w * s)), max(1, round(h * s))


def data_uri(img: Image.Image, fmt: str = "webp", quality: int = 80) -> str:
    """The image encoded as a base64 data URI (WebP, JPEG or PNG)."""
    buf = io.BytesIO()
    fmt = fmt.lower()
    if fmt == "png":
        img.save(buf, format="PNG", optimize=True)
    elif fmt in ("jpeg", "jpg"):
        img.save(buf, format="JPEG", quality=quality)
        fmt = "jpeg"
    elif fmt == "webp":
        img.save(buf, format="WEBP", quality=quality, method=4)
    else:
        raise ReportError(f"unknown image format {fmt!r} (webp, jpeg, png)")
    return f"data:image/{fmt};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values within [lo, hi]: the step m·10^k (m ∈ {1, 2, 2.5, 5, 10}) nearest to
    (hi − lo)/(count − 1) in ratio, so about `count` ticks."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / max(1, count - 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = min((m * power for m in (1, 2, 2.5, 5, 10)), key=lambda st: abs(raw / st - 1))
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    k = 0
    while first + k * step <= hi + 1e-9 * step:
        ticks.append(round(first + k * step, 12))
        k += 1
    return ticks


def histogram(
    scores: Sequence[float],
    truth: Sequence[bool | None] | None = None,
    threshold: float | None = None,
    bins: int = 30,
    width: int = 640,
    height: int = 214,
    *,
    review: float | None = None,
    normal_scores: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Geometry of the score histogram (SVG units): bars of the scores, the known-good
    images' scores as an outline on the same bins, the review band (t_r, t_d] shaded and
    the lines of the defect bound t_d (`threshold`) and the review bound t_r (`review`).

    Bins span the scores, the known-good scores, t_r and t_d. With ground truth the bars
    are stacked: normal at the bottom, anomalous on top.
    """
    s = np.asarray(scores, dtype=np.float64)
    known = None if normal_scores is None else np.asarray(normal_scores, np.float64).ravel()
    if known is not None:
        known = known[np.isfinite(known)]
    pooled = s if known is None or not known.size else np.concatenate([s, known])
    bounds = [b for b in (threshold, review) if b is not None and math.isfinite(b)]
    lo, hi = min([float(pooled.min()), *bounds]), max([float(pooled.max()), *bounds])
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    labelled = truth is not None and all(t is not None for t in truth)
    groups = (
        {"normal": ~np.asarray(truth, bool), "anomalous": np.asarray(truth, bool)}
        if labelled
        else {"all": np.ones(s.size, bool)}
    )
    counts = {k: np.histogram(s[m], bins=edges)[0] for k, m in groups.items()}
    known_counts = None if known is None else np.histogram(known, bins=edges)[0]
    left, right, top, bottom = 46, 12, 36, 34  # the bounds' labels above the plot
    pw, ph = width - left - right, height - top - bottom
    peak = max(1, int(sum(counts.values()).max()))
    if known_counts is not None and known_counts.size:
        peak = max(peak, int(known_counts.max()))
    x_of = lambda v: left + (v - lo) / (hi - lo) * pw  # noqa: E731
    y_of = lambda c: top + ph - c / peak * ph  # noqa: E731
    bars = []
    base = np.zeros(bins, dtype=np.int64)
    for group, c in counts.items():
        for i in range(bins):
            if c[i]:
                x0, x1 = x_of(edges[i]), x_of(edges[i + 1])
                y0, y1 = y_of(base[i] + c[i]), y_of(base[i])
                bars.append(
                    {"x": x0 + 0.5, "y": y0, "w": max(0.5, x1 - x0 - 1), "h": y1 - y0,
                     "group": group, "count": int(c[i]),
                     "lo": float(edges[i]), "hi": float(edges[i + 1])}
                )  # fmt: skip
        base = base + c
    labels = dict(zip(("defect", "review"), sig_labels([threshold, review])))
    plot = {"left": left, "top": top, "right": left + pw, "bottom": top + ph}
    lines = {
        name: None
        if value is None or not math.isfinite(value)
        else _bound_line(x_of(value), value, f"{name} bound {labels[name]}", name, plot)
        for name, value in (("defect", threshold), ("review", review))
    }
    _label_rows(lines["defect"], lines["review"])
    return {
        "width": width,
        "height": height,
        "plot": plot,
        "bars": bars,
        "known": None if known_counts is None else _step_outline(known_counts, edges, x_of, y_of),
        "xticks": [{"x": x_of(v), "label": t} for v, t in tick_labels(nice_ticks(lo, hi))],
        "yticks": [{"y": y_of(v), "label": f"{v:g}"} for v in nice_ticks(0, peak, 4)],
        "threshold": lines["defect"],
        "review": lines["review"],
        "band": None
        if lines["defect"] is None or lines["review"] is None
        else {"x0": lines["review"]["x"], "x1": lines["defect"]["x"]},
        "groups": list(counts),
        "counts": {k: int(v.sum()) for k, v in counts.items()},
    }


def _step_outline(counts: np.ndarray, edges: np.ndarray, x_of, y_of) -> dict[str, Any]:
    """The known-good counts as an SVG step path (an outline, no fill): one closed outline
    per run of non-empty bins, nothing along empty ones."""
    path, base = [], y_of(0)
    for i, c in enumerate(counts):
        if c and (i == 0 or not counts[i - 1]):
            path.append(f"M{x_of(edges[i]):.2f},{base:.2f}")
        if c:
            path += [f"V{y_of(int(c)):.2f}", f"H{x_of(edges[i + 1]):.2f}"]
            if i + 1 == len(counts) or not counts[i + 1]:
                path.append(f"V{base:.2f}")
    return {"path": " ".join(path), "counts": [int(c) for c in counts], "total": int(counts.sum())}


LABEL_ROWS = (11, 24)  # baselines of the histogram's two rows of bound labels


def _bound_line(x: float, value: float, label: str, name: str, plot: Mapping) -> dict[str, Any]:
    """A bound's line and label above the plot: the defect bound's label right of its line
    where it fits, the review bound's left of its line where it fits (so they point away
    from each other). The line runs from its label's row down to the axis."""
    text = len(label) * CHAR_WIDTH
    if name == "defect":
        anchor = "start" if x + 4 + text <= plot["right"] else "end"
    else:
        anchor = "end" if x - 4 - text >= plot["left"] else "start"
    return {
        "x": x, "value": value, "label": label, "anchor": anchor,
        "tx": x + (4 if anchor == "start" else -4), "ty": LABEL_ROWS[name != "defect"],
    }  # fmt: skip


def _label_rows(defect: dict | None, review: dict | None) -> None:
    """The label that points towards the other bound's line takes the top row: the other
    line starts one row lower, so it never crosses that label."""
    if defect is not None and review is not None and review["anchor"] == "start":
        review["ty"], defect["ty"] = LABEL_ROWS


def sig(value: float, digits: int = SIG_DIGITS) -> str:
    """`value` with `digits` significant digits, trailing zeros kept (0.350, 12.3, 1.20e-05)."""
    text = f"{float(value):#.{digits}g}"
    mantissa, e, exponent = text.partition("e")
    return mantissa.rstrip(".") + e + exponent


def sig_labels(values: Sequence[float | None], digits: int = SIG_DIGITS) -> list[str]:
    """Labels of `values` (None: "") with `digits` significant digits, or as few more as
    tell different values apart (two bounds 0.5017 and 0.5018 never both read 0.502)."""
    d = sig_digits(values, digits)
    return ["" if v is None or not math.isfinite(v) else sig(v, d) for v in values]


def sig_digits(values: Sequence[float | None], digits: int = SIG_DIGITS) -> int:
    """The fewest significant digits ≥ `digits` that write different values differently."""
    finite = {float(v) for v in values if v is not None and math.isfinite(v)}
    for d in range(digits, 17):
        if len({sig(v, d) for v in finite}) == len(finite):
            return d
    return 17


def bound_labels(threshold: Threshold | None) -> dict[str, str]:
    """The threshold's bounds as page labels: image bounds (t_d, t_r) and pixel bounds
    (defect, review, typical maximum) each told apart within their kind."""
    out: dict[str, str] = {}
    if threshold is None:
        return out
    for group in (
        ("image_threshold", "review_threshold"),
        ("pixel_threshold", "pixel_review", "pixel_typical"),
    ):
        values = [getattr(threshold, k) for k in group]
        out.update({k: t for k, t in zip(group, sig_labels(values)) if t})
    return out


def tick_labels(values: Sequence[float]) -> list[tuple[float, str]]:
    """(value, label) of ticks, with as few significant digits (at least 4) as write each
    tick exactly, so neighbours never read alike (0.501725 0.50175, not 0.5017 0.5018)."""
    if len(values) < 2:
        return [(v, f"{v:.4g}") for v in values]
    gap = min(abs(b - a) for a, b in zip(values, values[1:]))
    for digits in range(4, 16):
        labels = [f"{v:.{digits}g}" for v in values]
        if all(abs(float(t) - v) <= gap * 1e-6 for t, v in zip(labels, values)):
            break
    return list(zip(values, labels))


BAR_LEFT, BAR_LENGTH, BAR_WIDTH = 10, 300, 320  # the template's colour bar (SVG units)
CHAR_WIDTH = 6.5  # about, of the report's 11-px SVG text


def colour_bar(lo: float, hi: float, marks: Mapping[str, float | None] | None = None) -> dict:
    """Gradient stops and ticks of the run's colour scale, with optional marked values.

    Each mark gets its own label row under the bar (no two labels overlap), its value with
    3 significant digits (more where two marks would read alike). A label that would
    cross the bar's ends is anchored at its tick instead of centred on it ("anchor": start
    / middle / end), so none is cut at the edge of the picture; a mark label's ▲ stays
    next to its mark. A mark beyond the scale sits at the bar's end it passed, "off scale"."""
    stops = [
        {"offset": f"{p:.3f}", "colour": "#" + bytes(LUT[round(p * 255)].tolist()).hex()}
        for p in np.linspace(0.0, 1.0, 11)
    ]
    ticks = [
        {"pos": (v - lo) / (hi - lo), "label": t, "anchor": _anchor((v - lo) / (hi - lo), t)}
        for v, t in tick_labels(nice_ticks(lo, hi, 5))
    ]
    given = {k: float(v) for k, v in (marks or {}).items() if v is not None and math.isfinite(v)}
    shown = []
    for (name, v), text in zip(given.items(), sig_labels(list(given.values()))):
        pos = min(1.0, max(0.0, (v - lo) / (hi - lo)))
        text = f"{name} {text}" + ("" if lo <= v <= hi else " (off scale)")
        anchor = _anchor(pos, f"▲ {text}")
        label = f"{text} ▲" if anchor == "end" else f"▲ {text}"
        dx = {"start": -4, "middle": 0, "end": 4}[anchor]  # the ▲ over the mark
        y = 44 + 12 * len(shown)
        shown.append({"pos": pos, "label": label, "anchor": anchor, "dx": dx, "y": y})
    height = 46 + 12 * max(0, len(shown) - 1)
    return {"lo": lo, "hi": hi, "stops": stops, "ticks": ticks, "marks": shown, "height": height}


def _anchor(pos: float, label: str) -> str:
    """ "start" / "end" for a label centred at `pos` of the bar that would cross the
    picture's left / right edge, else "middle"."""
    x, half = BAR_LEFT + pos * BAR_LENGTH, len(label) * CHAR_WIDTH / 2
    if x - half < 0:
        return "start"
    return "end" if x + half > BAR_WIDTH else "middle"


def flatten(info: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Nested settings -> sorted (dotted key, JSON value) pairs for the settings table."""
    return sorted((key, _text(value)) for key, value in _leaves(info, prefix))


def _leaves(info: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in info.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.extend(_leaves(value, name + "."))
        else:
            out.append((name, value))
    return out


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)


def shown_settings(
    info: Mapping[str, Any], shown: Sequence[str] | None = None
) -> tuple[list[tuple[str, str]], int]:
    """(rows of the settings table, how many were left out): the flattened settings whose
    dotted key is in `shown` or under one of its entries ("settings" shows every
    "settings.x"; None shows all), less the ones with no value (None, "", empty list or
    mapping)."""
    every = _leaves(info)
    keep = sorted(
        (key, _text(value))
        for key, value in every
        if not _empty(value)
        and (shown is None or any(key == s or key.startswith(f"{s}.") for s in shown))
    )
    return keep, len(every) - len(keep)


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, (str, list, tuple, dict, Mapping)) and not value)


# ---------------------------------------------------------------------------------------
# Rendering one row
# ---------------------------------------------------------------------------------------


@dataclass
class _Rendered:
    thumb: str
    thumb_size: tuple[int, int]
    detail: dict[str, Any]
    pixel_counts: Counts | None


def _load_image(row: ReportRow, map_shape: tuple[int, int] | None) -> Image.Image:
    if row.source is None:
        h, w = map_shape or (256, 256)
        return Image.new("RGB", (w, h), (128, 128, 128))
    try:
        return load_rgb(row.source)
    except ImageDecodeError as e:
        raise ReportError(f"{row.source}: {e}") from e


def _load_mask(path: str | os.PathLike, shape: tuple[int, int]) -> np.ndarray:
    try:
        with Image.open(path) as img:
            m = img.convert("L")
            if m.size != (shape[1], shape[0]):
                m = m.resize((shape[1], shape[0]), Image.NEAREST)
            return np.asarray(m) > 0
    except OSError as e:
        raise ReportError(f"{path}: cannot read ground-truth mask ({type(e).__name__})") from e


def _render(
    row: ReportRow, scale: tuple[float, float], threshold: Threshold | None, opts: dict
) -> _Rendered:
    lo, hi = scale
    t_px = None if threshold is None else threshold.pixel_threshold
    values = load_map(row.map) if row.map is not None else None
    image = _load_image(row, None if values is None else values.shape)
    if values is None:  # no map: an all-low map of the image's size
        values = np.full((image.height, image.width), lo, np.float32)
    gt = None
    if row.mask is not None:
        gt = _load_mask(row.mask, values.shape)
    elif row.truth is False:
        gt = np.zeros(values.shape, bool)
    counts = None
    if t_px is not None and gt is not None:
        counts = confusion(gt, values > t_px)

    # the enlarged view first, the thumbnail from it (the map is stretched to the image)
    view_size = fit_size(image.size, opts["view_px"])
    view_rgb = image.resize(view_size, Image.BILINEAR, reducing_gap=2.0)
    view_map = resize_map(values, view_size)
    small = view_rgb if opts["thumb_px"] <= opts["view_px"] else image
    thumb_size = fit_size(image.size, opts["thumb_px"])
    thumb_rgb = np.asarray(small.resize(thumb_size, Image.BILINEAR, reducing_gap=2.0))
    thumb_map = resize_map(view_map if small is view_rgb else values, thumb_size)
    thumb = blend(thumb_rgb, quantise(to_unit(thumb_map, lo, hi)))
    if row.decision in FLAGGED and threshold is not None:
        flagged = defect_mask(thumb_map, row.decision, threshold)  # type: ignore[arg-type]
        if flagged is not None and flagged.any():
            thumb = paint(thumb, outline(flagged), PRED_COLOUR)
    gt_line = _outline_at(gt, thumb_size)
    if gt_line is not None:
        thumb = paint(thumb, gt_line, GT_COLOUR)
    thumb_uri = data_uri(Image.fromarray(thumb), opts["image_format"], opts["quality"])

    map_size = fit_size(view_size, opts["map_px"])
    map_levels = quantise(to_unit(resize_map(values, map_size), lo, hi))
    gt_line = _outline_at(gt, view_size)
    rgb = np.asarray(view_rgb)
    pred = None if threshold is None else defect_mask(view_map, row.decision, threshold)
    detail = {
        "name": row.name,
        "source": None if row.source is None else str(row.source),
        "score": float(row.score),
        "ratio": None if row.ratio is None or not math.isfinite(row.ratio) else float(row.ratio),
        "decision": row.decision,
        "label": row.label,
        "truth": row.truth,
        "unfamiliar": row.unfamiliar,
        "near_identical": row.near_identical,
        "global_change": row.global_change,
        "w": view_size[0],
        "h": view_size[1],
        "img": data_uri(Image.fromarray(rgb), opts["image_format"], opts["quality"]),
        "map": data_uri(Image.fromarray(map_levels), opts["image_format"], 92),
        "gt": _mask_uri(gt_line),
        "pred": None if pred is None or not pred.any() else _mask_uri(outline(pred)),
    }
    return _Rendered(thumb_uri, thumb_size, detail, counts)


def _outline_at(mask: np.ndarray | None, size: tuple[int, int]) -> np.ndarray | None:
    """Outline of a mask resized (nearest) to size = (w, h); None when there is nothing."""
    if mask is None or not mask.any():
        return None
    small = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))
    return outline(small) if small.any() else None


def _mask_uri(mask: np.ndarray | None) -> str | None:
    if mask is None or not mask.any():
        return None
    return data_uri(Image.fromarray(mask.astype(np.uint8) * 255), "png")


# ---------------------------------------------------------------------------------------
# Metrics table (labelled mode)
# ---------------------------------------------------------------------------------------


def category_table(
    rows: Sequence[ReportRow], pixel_counts: Sequence[Counts | None]
) -> list[dict[str, Any]]:
    """Per-category precision / recall / F1 / FRR of the decisions, image and pixel level.

    Pixel counts are summed over a category's images; NaN when any image lacks them.
    """
    cats: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        cats.setdefault(row.category or "all", []).append(i)
    if len(cats) > 1:
        cats["all"] = list(range(len(rows)))
    table = []
    for cat, idx in cats.items():
        labelled = [i for i in idx if rows[i].truth is not None and rows[i].decision]
        img = confusion(
            [rows[i].truth for i in labelled], [rows[i].decision == "defect" for i in labelled]
        )
        entry: dict[str, Any] = {"category": cat, "images": len(idx), "defects": img.tp + img.fn}
        entry.update({f"image_{k}": v for k, v in _rates(img).items()})
        px = [pixel_counts[i] for i in idx]
        if px and all(c is not None for c in px):
            total = sum(px[1:], px[0])
            entry.update({f"pixel_{k}": v for k, v in _rates(total).items()})
        else:
            entry.update({f"pixel_{k}": math.nan for k in _rates(Counts(0, 0, 0, 0))})
        table.append(entry)
    return table


def _rates(c: Counts) -> dict[str, float]:
    return {
        "precision": c.precision,
        "recall": c.recall,
        "f1": c.f1,
        "false_reject_rate": c.false_reject_rate,
    }


def _metric_columns(table: Sequence[Mapping[str, Any]]) -> list[str]:
    cols: list[str] = []
    for entry in table:
        cols.extend(k for k in entry if k not in cols)
    return cols


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(value)
    return "–" if not math.isfinite(value) else f"{value:.3f}"


# ---------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("anoclip.results", "templates"), autoescape=True)
    env.filters["fmt"] = _fmt
    env.filters["sig"] = sig
    return env


def input_rows(inputs: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The threshold's inputs for its table: floats with 4 significant digits (a centre
    0.51234567 reads 0.5123), the rest as the settings table writes them."""
    return sorted(
        (key, f"{v:.4g}" if isinstance(v, float) and math.isfinite(v) else _text(v))
        for key, v in _leaves(inputs)
    )


def write_report(
    out_dir: str | os.PathLike,
    rows: Iterable[ReportRow | Mapping[str, Any]],
    threshold: Threshold | None = None,
    settings_info: Mapping[str, Any] | None = None,
    title: str = "anoclip report",
    *,
    metrics: Mapping[str, Mapping[str, Any]] | None = None,
    scale: tuple[float, float] | None = None,
    scale_quantiles: tuple[float, float] = (0.5, 0.999),
    normal_scores: Sequence[float] | None = None,
    settings_shown: Sequence[str] | None = None,
    thumb_px: int = 160,
    view_px: int = 320,
    map_px: int = 192,
    bins: int = 30,
    image_format: str = "webp",
    quality: int = 80,
    workers: int = 1,
    filename: str = REPORT,
) -> Path:
    """Write OUT/report.html (one self-contained file) and return its path.

    rows: :class:`ReportRow` records or mappings (source, name, score, decision, ratio, map,
    notes, and for labelled mode label / anomalous / mask / category). threshold: the
    calibrated threshold (None: no bounds, no mask outlines). settings_info: shown as a
    table, only its dotted keys under `settings_shown` (None: all) that have a value.
    metrics: category -> {column: value}, shown instead of the automatic table in labelled
    mode. scale: the maps' (lo, hi); default the threshold's calibrated scale, else the
    run-wide `scale_quantiles` of the maps (:func:`report_scale`). normal_scores: the
    known-good images' scores, drawn over the histogram.
    """
    rows = ranked(as_rows(rows))
    if not rows:
        raise ReportError("no images to report")
    lo, hi, scale_kind = report_scale(rows, threshold, scale, scale_quantiles)
    opts = {
        "thumb_px": thumb_px,
        "view_px": view_px,
        "map_px": map_px,
        "image_format": image_format,
        "quality": quality,
    }

    def render(row: ReportRow) -> _Rendered:
        return _render(row, (lo, hi), threshold, opts)

    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            rendered = list(pool.map(render, rows))
    else:
        rendered = [render(r) for r in rows]

    truth = [r.truth for r in rows]
    labelled = any(t is not None for t in truth)
    if metrics is not None:
        table = [{"category": k, **dict(v)} for k, v in metrics.items()]
    elif labelled:
        table = category_table(rows, [r.pixel_counts for r in rendered])
    else:
        table = []
    settings, hidden = shown_settings(settings_info or {}, settings_shown)
    page = _page(rows, rendered, threshold, bins=bins, normal_scores=normal_scores)
    page["known_good"] = known_good_use(threshold, settings_info or {}, normal_scores)
    html = (
        _environment()
        .get_template("report.html.j2")
        .render(
            title=title,
            labelled=labelled,
            threshold=threshold,
            threshold_inputs=input_rows(threshold.inputs) if threshold else [],
            unsupervised=threshold is not None and threshold.unsupervised,
            colour_bar=colour_bar(lo, hi, _pixel_marks(threshold)),
            scale={"lo": lo, "hi": hi, "kind": scale_kind, "quantiles": scale_quantiles},
            settings=settings,
            settings_hidden=hidden,
            table=table,
            columns=_metric_columns(table),
            details=[out.detail for out in rendered],
            lut=LUT.tolist(),
            alpha=OVERLAY_ALPHA,
            ramp=OPACITY_RAMP,
            gt_colour=list(GT_COLOUR),
            pred_colour=list(PRED_COLOUR),
            **page,
        )
    )
    return _write_atomic(Path(out_dir), filename, html)


def known_good_use(
    threshold: Threshold | None,
    info: Mapping[str, Any],
    normal_scores: Sequence[float] | None = None,
) -> str | None:
    """How the run used known-good images, for the advice the page gives: "bank" (the set
    was scored with them as its bank: run.json's ``decisions.normals_as_bank``), "threshold"
    (they calibrated the threshold: ``decisions.normals``, a threshold not unsupervised, or
    their scores given), None (no known-good images)."""
    flat = dict(_leaves(info))
    if flat.get("decisions.normals_as_bank"):
        return "bank"
    supervised = threshold is not None and not threshold.unsupervised
    scored = normal_scores is not None and len(normal_scores) > 0
    if flat.get("decisions.normals") or supervised or scored:
        return "threshold"
    return None


def _pixel_marks(threshold: Threshold | None) -> dict[str, float | None]:
    """The colour bar's marks: typical normal maximum, pixel review and defect bounds."""
    if threshold is None:
        return {}
    return {
        "typical normal max": threshold.pixel_typical,
        "pixel review bound": threshold.pixel_review,
        "pixel defect bound": threshold.pixel_threshold,
    }


def _page(
    rows: Sequence[ReportRow],
    rendered: Sequence[_Rendered],
    threshold: Threshold | None,
    *,
    bins: int,
    normal_scores: Sequence[float] | None,
) -> dict[str, Any]:
    """The template's cards, counts, histogram and threshold labels."""
    t_d = None if threshold is None else threshold.image_threshold
    t_r = None if threshold is None else threshold.review_threshold
    digits = sig_digits([t_d, t_r])
    cards = [_card(i, row, out, digits) for i, (row, out) in enumerate(zip(rows, rendered))]
    decisions = [r.decision for r in rows]
    truth = [r.truth for r in rows]
    labelled = any(t is not None for t in truth)
    known = None if normal_scores is None else [float(v) for v in normal_scores]
    return {
        "cards": cards,
        "counts": {
            "all": len(rows),
            **{d: decisions.count(d) for d in ("ok", "review", "defect")},
            "wrong": sum(c["wrong"] for c in cards),
            "unfamiliar": sum(r.unfamiliar for r in rows),
            "near_identical": (near := sum(r.near_identical for r in rows)),
            "global_change": sum(r.global_change for r in rows),
            "series_untrusted": series_untrusted(near, len(rows)),
        },
        "histogram": histogram(
            [r.score for r in rows],
            truth if labelled else None,
            t_d,
            bins=bins,
            review=t_r,
            normal_scores=known or None,
        ),
        "bounds": bound_labels(threshold),
        "ratio_note": ratio_note(threshold),
    }


def ratio_note(threshold: Threshold | None) -> str | None:
    """What a card's ×ratio means (None without a positive defect bound)."""
    if threshold is None or not threshold.image_threshold > 0:
        return None
    note = "score ÷ defect bound: above ×1 is a defect"
    t_r = threshold.review_threshold
    if t_r is not None:
        note += f"; the review band starts at ×{t_r / threshold.image_threshold:.2f}"
    return note


def _card(index: int, row: ReportRow, out: _Rendered, digits: int = SIG_DIGITS) -> dict:
    """One card of the gallery (what the template shows of a row). "wrong": a defect call
    on a normal image or an ok call on an anomalous one (review asks a person)."""
    ratio = None if row.ratio is None or not math.isfinite(row.ratio) else row.ratio
    wrong = (
        row.truth is not None
        and row.decision in ("ok", "defect")
        and (row.truth != (row.decision == "defect"))
    )
    return {
        "index": index, "name": row.name, "score": float(row.score), "ratio": ratio,
        "score_label": sig(row.score, digits), "unfamiliar": row.unfamiliar,
        "near_identical": row.near_identical, "global_change": row.global_change,
        "decision": row.decision, "label": row.label, "truth": row.truth, "wrong": wrong,
        "thumb": out.thumb, "tw": out.thumb_size[0], "th": out.thumb_size[1],
    }  # fmt: skip


def _write_atomic(out: Path, filename: str, text: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / filename
    tmp = out / f".{filename}.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_mask(
    out_dir: str | os.PathLike,
    name: str,
    anomaly_map: MapInput,
    threshold: Threshold,
    decision: str | None,
    size: tuple[int, int] | None = None,
) -> Path:
    """Write OUT/masks/NAME.png: 255 inside :func:`anoclip.threshold.defect_mask` (the pixel
    review bound for a flagged image, never empty; the defect bound for an ok one), 8-bit.

    size = (width, height) of the image when the map is not at the image's size; the map
    is then resized bilinearly before thresholding.
    """
    values = load_map(anomaly_map)
    if size is not None:
        values = resize_map(values, (int(size[0]), int(size[1])))
    folder = Path(out_dir) / MASKS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    tmp = folder / f".{name}.png.tmp"
    mask = defect_mask(values, decision, threshold)  # type: ignore[arg-type]
    Image.fromarray((mask * 255).astype(np.uint8)).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
