"""Procedural texture benchmark: seeded, photograph-like grey textures with flaws and changes.

Nothing is shipped: every image is generated at run time with numpy, Pillow and scipy. Each
family is a random process (a material); every image is a new draw of it (another part of the
same roll/plate), so good images share scale, orientation and contrast and differ naturally.

Families (feature sizes are given at 256 px and scale with the image: a 1024-px image is the
same field of view photographed at 4x the resolution):

    fractal   cast stone: Gaussian field with power spectrum P(f) ∝ (f² + f0²)^(-β/2),
              β = 2.8, knee f0 = 1/(48 px), fine mottling, sparse dark pores (air bubbles)
    woven     plain-weave grey fabric: warp/weft yarns of pitch 8 px, per-yarn width and
              brightness jitter, slightly wavy yarn paths, twist and fibre noise
    grain     wood grain: distorted growth rings (period ~20 px, dark late wood), fibres
              and pores (oriented Gaussian-filtered noise, σ_along ≫ σ_across) along x
    granular  sandpaper: Poisson grains (σ ≈ 0.9 and 1.6 px), relief-lit from the top left

Photograph model (every image): texture t (zero mean, unit std) → grey g = μ + σ·c·t, optical
blur (σ = 0.6 px), illumination L = 1 + a·(linear ramp) − v·r² (a ≤ 0.07, v ≤ 0.05, random
direction), sensor noise N(0, 1.2² + 0.015·g), 8-bit rounding.

Local flaws (mask 0/255 = the flaw's visible pixels), extent d px (default drawn in 6–20 px,
scratch 10–20 px, scaled by size/256; an explicit ``size_px`` is used as is), placed anywhere
fully inside the image: ``speck`` (dark or bright irregular blob, ±3.2·std), ``scratch``
(1–2 px wide slightly bowed segment, ±4·std), ``hole`` (dark round pit with a bright rim),
``stain`` (soft irregular discoloured blob with a tide line, texture damped inside).

Global changes (new draws, whole image changed, no mask): ``scale`` (features x0.6),
``contrast`` (texture contrast x0.5 around its mean), ``blur`` (Gaussian σ = 2 px at 256 px),
``orientation`` (woven/grain: rotated by 30–45°; fractal/granular, which are isotropic:
anisotropy 2.5:1 along a random axis, i.e. elongated blobs/grains).

Layout written by :func:`write_set` (``anoclip evaluate --dataset folder --root ROOT``):

    ROOT/FAM/good/NNN.png, ROOT/FAM/KIND/NNN.png, ROOT/FAM/masks/KIND/NNN_mask.png (local)
    ROOT/FAM/train/good/NNN.png         known-good images (separate draws; the reader skips
                                        train/ since it has no image files of its own, and
                                        anoclip's protocol reads it as BASE/train/good)
    ROOT/FAM_global/good, train/good    byte copies of the above
    ROOT/FAM_global/global_KIND/NNN.png global changes, no masks/ folder (see write_set)
    ROOT/FAM/manifest.csv               path (relative to ROOT), label, kind, flaw_px, cx, cy

Run: python benchmarks/textures.py --out DIR [--families fractal woven ...] [--size 256]
     [--seed 0] [--flaw-px N] [--sheet FILE.png] [--sheet-tile 256] [--sheet-crop]
     [--sheet-levels 256]
docs/textures.png: --out DIR --sheet docs/textures.png --sheet-tile 144 --sheet-crop
     --sheet-levels 64 (native 144-px windows of the 256-px images, about the flaw for local
     kinds; whole 256-px tiles at 256 levels make a ~2 MB PNG: sensor noise does not
     compress). For 1024-px sets use --sheet-crop: resized tiles shrink a 20-px flaw to 5 px.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import fft as sfft
from scipy import ndimage

FAMILIES = ("fractal", "woven", "grain", "granular")
LOCAL_KINDS = ("speck", "scratch", "hole", "stain")
GLOBAL_KINDS = ("scale", "contrast", "blur", "orientation")
ROTATING = ("woven", "grain")  # families whose orientation change is a rotation
# grey mean and texture std per family (8-bit levels)
LEVELS = {"fractal": (138, 20), "woven": (112, 30), "grain": (122, 24), "granular": (118, 27)}


@dataclass(frozen=True)
class Look:
    """Render parameters: s = feature scale (1 at 256 px), angle in degrees, aniso = axis
    ratio of isotropic families, contrast factor c, extra blur σ (px)."""

    s: float = 1.0
    angle: float = 0.0
    aniso: float = 1.0
    contrast: float = 1.0
    blur: float = 0.0


# ------------------------------------------------------------------ fields


def _freqs(m: int, angle: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """rfft2 frequency grid (cycles/px) rotated by `angle` degrees: (f_along, f_across)."""
    fy = np.fft.fftfreq(m)[:, None]
    fx = np.fft.rfftfreq(m)[None, :]
    a = np.deg2rad(angle)
    return fx * np.cos(a) + fy * np.sin(a), -fx * np.sin(a) + fy * np.cos(a)


def _filtered(field: np.ndarray, amp: np.ndarray) -> np.ndarray:
    """Periodic linear filter: irfft2(rfft2(field) · amp), in float32 (scipy.fft)."""
    spec = sfft.rfft2(field.astype(np.float32)) * amp.astype(np.float32)
    return sfft.irfft2(spec, s=field.shape)


def _oriented(field: np.ndarray, sig_along: float, sig_across: float, angle: float) -> np.ndarray:
    """Oriented Gaussian blur (periodic): amplitude exp(−2π²(σa² fa² + σc² fc²)), the long
    axis σa along `angle` degrees (x right, y down)."""
    fa, fc = _freqs(field.shape[0], angle)
    amp = np.exp(-2 * np.pi**2 * ((sig_along * fa) ** 2 + (sig_across * fc) ** 2))
    return _filtered(field, amp)


def _unit(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit std."""
    return (x - x.mean()) / (x.std() + 1e-12)


def _crop(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """A random n×n window of a (periodic) field 1.25 n wide, so images are not periodic."""
    i, j = rng.integers(0, x.shape[0] - n + 1, size=2)
    return x[i : i + n, j : j + n]


def _coords(n: int, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates about the centre, rotated by `angle` degrees: (along, across)."""
    y, x = np.mgrid[0:n, 0:n].astype(np.float64) - (n - 1) / 2
    a = np.deg2rad(angle)
    return x * np.cos(a) + y * np.sin(a), -x * np.sin(a) + y * np.cos(a)


# ------------------------------------------------------------------ families


def _points(m: int, density: float, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """m×m field of Poisson points: count ~ Poisson(density·m²) at uniform pixels, heights
    lognormal(0, σ) (σ = 0: all 1)."""
    k = rng.poisson(density * m * m)
    out = np.zeros((m, m), np.float32)
    np.add.at(out, (rng.integers(0, m, k), rng.integers(0, m, k)), rng.lognormal(0, sigma, k))
    return out


def _fractal(n: int, rng: np.random.Generator, look: Look) -> np.ndarray:
    """Cast stone. Amplitude A(f) = (f² + f0²)^(−β/4)/rms + 0.25·exp(−2π²(1.2·s)²f²)/rms
    (power ∝ (f² + f0²)^(−β/2), β = 2.8, f0 = 1/(48·s), plus fine mottling at 1.2·s) in the
    metric f² = (k·fa)² + (fc/k)², k = √aniso (aniso > 1: blobs elongated along `angle`);
    sparse dark pores: Poisson points (density 1.5e-3/s²), blurred σ = 0.9·s, depth 4 std."""
    m, s = n + n // 4, look.s
    k = np.sqrt(look.aniso)
    fa, fc = _freqs(m, look.angle)
    f2 = (k * fa) ** 2 + (fc / k) ** 2
    amp = (f2 + (1 / (48 * s)) ** 2) ** (-2.8 / 4)
    amp[0, 0] = 0
    fine = np.exp(-2 * np.pi**2 * (1.2 * s) ** 2 * f2)
    amp = amp / np.sqrt(np.mean(amp**2)) + 0.25 * fine / np.sqrt(np.mean(fine**2))
    base = _unit(_filtered(rng.standard_normal((m, m), dtype=np.float32), amp))
    pores = _oriented(_points(m, 1.5e-3 / s**2, rng, 0.15), 0.9 * s * k, 0.9 * s / k, look.angle)
    tex = base - 4.0 * np.clip(pores * 2.0 / (pores.max() + 1e-12), 0, 1)
    return _unit(_crop(tex, n, rng))


def _wave(t: np.ndarray, rng: np.random.Generator, p: float) -> np.ndarray:
    """Smooth yarn waviness: three sinusoids of wavelengths 10–30 pitches, total amplitude
    ~0.15 pitch, random phases; evaluated on a 1-px grid and interpolated."""
    grid = np.arange(np.floor(t.min()), np.ceil(t.max()) + 1)
    out = np.zeros_like(grid)
    for _ in range(3):
        lam = rng.uniform(10, 30) * p
        out += 0.05 * p * np.sin(2 * np.pi * grid / lam + rng.uniform(0, 2 * np.pi))
    return np.interp(t.ravel(), grid, out).reshape(t.shape).astype(np.float32)


def _yarns(idx: np.ndarray, frac: np.ndarray, rng: np.random.Generator):
    """Per-yarn jitter: width w ∈ [0.74, 0.92] pitch, brightness 1 + 0.07·N, 4 % slubs.
    Returns (c, b): the position across the yarn in [−1, 1] inside it, and its brightness."""
    i = (idx - idx.min()).astype(np.intp)
    k = int(i.max()) + 1
    width = rng.uniform(0.74, 0.92, k)
    bright = 1 + 0.07 * rng.standard_normal(k)
    slub = np.where(rng.random(k) < 0.04, 1.2, 1.0)
    return (frac - 0.5) / (width[i] / 2), bright[i] * slub[i]


def _woven(n: int, rng: np.random.Generator, look: Look) -> np.ndarray:
    """Plain weave, pitch p = 8·s px. Warp coordinate u = x' + wave(y'), weft v = y' +
    wave(x') (x', y' rotated by `angle`); yarn cross-section √(1 − c²), bulge 0.55 + 0.45·
    sin(π·t) along each float, warp on top where (i + j) is even; the yarn underneath shows
    at 45 % in the gaps. Twist: 10 % stripes slanted across the yarn; fibre noise 12 %."""
    p = 8.0 * look.s
    x, y = (c.astype(np.float32) for c in _coords(n, look.angle + rng.normal(0, 0.5)))
    u = x + _wave(y, rng, p) + rng.uniform(0, 2 * p)
    v = y + _wave(x, rng, p) + rng.uniform(0, 2 * p)
    iu, iv = np.floor(u / p), np.floor(v / p)
    au, av = u / p - iu, v / p - iv
    cu, bu = _yarns(iu, au, rng)
    cv, bv = _yarns(iv, av, rng)
    fib_u = _oriented(rng.standard_normal((n, n)), 3 * look.s, 0.5 * look.s, look.angle + 90)
    fib_v = _oriented(rng.standard_normal((n, n)), 3 * look.s, 0.5 * look.s, look.angle)
    tw_u = 0.1 * np.sin(2 * np.pi * (v / (0.45 * p) + 0.6 * cu))
    tw_v = 0.1 * np.sin(2 * np.pi * (u / (0.45 * p) + 0.6 * cv))
    warp = bu * np.sqrt(np.clip(1 - cu**2, 0, 1)) * (0.55 + 0.45 * np.sin(np.pi * av))
    weft = bv * np.sqrt(np.clip(1 - cv**2, 0, 1)) * (0.55 + 0.45 * np.sin(np.pi * au))
    warp *= 1 + tw_u + 0.12 * _unit(fib_u)
    weft *= 1 + tw_v + 0.12 * _unit(fib_v)
    top = (iu + iv) % 2 == 0
    inside = np.where(top, np.abs(cu) < 1, np.abs(cv) < 1)
    tex = np.where(top, warp, weft)
    tex = np.where(inside, tex, 0.45 * np.where(top, weft, warp))
    return _unit(tex)


def _grain(n: int, rng: np.random.Generator, look: Look) -> np.ndarray:
    """Wood grain along `angle`. Rings: phase r = (across + 10·s·w)/(20·s) with w a smooth
    field (σ 160·s × 50·s); each ring is light early wood with a dark late-wood band,
    exp(−((frac(r) − 0.8)/0.09)²). Fibres: white noise blurred σ_along 25·s × σ_across
    0.5·s; pores: sparse dark dashes (density 0.004/s², σ 4·s × 0.6·s); figure: σ 90·s × 8·s."""
    m = n + n // 4
    s, ang = look.s, look.angle + rng.normal(0, 1.0)
    warp = _unit(_oriented(rng.standard_normal((m, m)), 160 * s, 50 * s, ang))
    _, across = _coords(m, ang)
    r = (across + 10 * s * warp) / (20 * s * rng.uniform(0.92, 1.08)) + rng.uniform(0, 1)
    late = np.exp(-((((r - np.floor(r)) - 0.8) / 0.09) ** 2))
    fibre = _oriented(rng.standard_normal((m, m)), 25 * s, 0.5 * s, ang)
    pores = _oriented(_points(m, 0.004 / s**2, rng, 0.0), 4 * s, 0.6 * s, ang)
    band = _oriented(rng.standard_normal((m, m)), 90 * s, 8 * s, ang)
    tex = -1.0 * _unit(late) + 0.45 * _unit(fibre) - 0.3 * _unit(pores) + 0.5 * _unit(band)
    return _unit(_crop(tex, n, rng))


def _granular(n: int, rng: np.random.Generator, look: Look) -> np.ndarray:
    """Sandpaper: grains are Poisson points, heights lognormal (σ = 0.5), of two sizes,
    each blurred by its σ and weighted by it: σ = 0.9·s (density 0.12/s² per px) and 1.6·s
    (0.03/s²), σ times √aniso along `angle` and ÷ √aniso across. The height h is lit from
    the top left: t = h + 1.6·s·(−∂h/∂x − ∂h/∂y)/√2."""
    s, k = look.s, np.sqrt(look.aniso)
    h = np.zeros((n, n))
    for sig, dens in ((0.9, 0.12), (1.6, 0.03)):
        pts = _points(n, dens / s**2, rng, 0.5)
        h += sig * _oriented(pts, sig * s * k, sig * s / k, look.angle)
    gy, gx = np.gradient(h)
    tex = h + 1.6 * s * (-gx - gy) / np.sqrt(2)
    return _unit(tex)


TEXTURES = {"fractal": _fractal, "woven": _woven, "grain": _grain, "granular": _granular}


# ------------------------------------------------------------------ photograph


def _photograph(tex: np.ndarray, family: str, rng: np.random.Generator, look: Look) -> np.ndarray:
    """g = μ + σ·c·(1 + 0.04·N)·t, optical blur σ = 0.6 px (plus `look.blur`), illumination
    L = 1 + a·ramp − v·r² (a ~ U(0.02, 0.07), v ~ U(0, 0.05), r = radius / half-size),
    sensor noise N(0, 1.2² + 0.015·g), rounded and clipped to uint8."""
    n = tex.shape[0]
    mu, sd = LEVELS[family]
    g = mu * rng.uniform(0.97, 1.03) + sd * look.contrast * (1 + 0.04 * rng.normal()) * tex
    g = ndimage.gaussian_filter(g, np.hypot(0.6, look.blur), mode="reflect")
    along, across = _coords(n, rng.uniform(0, 360))
    r2 = (along**2 + across**2) / (n / 2) ** 2
    g = g * (1 + rng.uniform(0.02, 0.07) * along / (n / 2) - rng.uniform(0, 0.05) * r2)
    g = g + rng.standard_normal(g.shape) * np.sqrt(1.44 + 0.015 * np.clip(g, 0, None))
    return np.clip(np.rint(g), 0, 255).astype(np.uint8)


def _render(family: str, size: int, rng: np.random.Generator, look: Look) -> np.ndarray:
    """One photograph of `family` at `look` (feature scale times size/256)."""
    if family not in TEXTURES:
        raise ValueError(f"unknown family {family!r}: use one of {', '.join(FAMILIES)}")
    look = replace(look, s=look.s * size / 256, blur=look.blur * size / 256)
    return _photograph(TEXTURES[family](size, rng, look), family, rng, look)


def good_image(family: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A good image, uint8 [size, size]: natural variation is feature scale 1 ± 3 %, plus the
    family's own per-image jitter (phases, yarns, rings, orientation ±0.5–1°)."""
    return _render(family, size, rng, Look(s=1 + 0.03 * rng.standard_normal()))


def global_change(family: str, kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A changed image (a new draw): scale x0.6, contrast x0.5, blur σ = 2 px at 256 px, or
    orientation: rotation by ±U(30, 45)° (woven, grain) or anisotropy 2.5 along a random
    axis (fractal, granular: isotropic, so a rotation would change nothing)."""
    look = Look(s=1 + 0.03 * rng.standard_normal())
    if kind == "scale":
        look = replace(look, s=0.6 * look.s)
    elif kind == "contrast":
        look = replace(look, contrast=0.5)
    elif kind == "blur":
        look = replace(look, blur=2.0)
    elif kind == "orientation" and family in ROTATING:
        look = replace(look, angle=rng.choice([-1, 1]) * rng.uniform(30, 45))
    elif kind == "orientation":
        look = replace(look, aniso=2.5, angle=rng.uniform(0, 180))
    else:
        raise ValueError(f"unknown global change {kind!r}: use one of {', '.join(GLOBAL_KINDS)}")
    return _render(family, size, rng, look)


# ------------------------------------------------------------------ local flaws


def _alpha(x, y, r, rng, irregular: float, edge: float):
    """Soft irregular ellipse: long semi-axis r, aspect U(0.65, 1), random angle; outline
    R(θ) = 1 − irregular·q(θ), q ∈ [0, 1] from harmonics 2–4 (so the extent stays ≤ 2r);
    α = clip((R − ρ)·r/edge + 0.5, 0, 1) with ρ the elliptic radius in units of r."""
    a = rng.uniform(0, np.pi)
    u, v = x * np.cos(a) + y * np.sin(a), -x * np.sin(a) + y * np.cos(a)
    rho = np.hypot(u / r, v / (r * rng.uniform(0.65, 1.0)))
    th = np.arctan2(v, u)
    q = sum(rng.uniform(0.3, 1) * np.sin(k * th + rng.uniform(0, 6.3)) for k in (2, 3, 4))
    q = (q - q.min()) / (np.ptp(q) + 1e-12)
    return np.clip((1 - irregular * q - rho) * r / edge + 0.5, 0, 1), rho


def _speck(p, x, y, d, rng, mu, sd):
    """Dark or bright blob, level μ ± 3.2·std with 25 % of the texture left, edge 0.8 px."""
    a, _ = _alpha(x, y, d / 2, rng, 0.2, 0.8)
    target = mu + rng.choice([-1, 1]) * 3.2 * sd
    return p * (1 - a) + a * (target + 0.25 * (p - mu)), a > 0.3


def _scratch(p, x, y, d, rng, mu, sd):
    """Segment of length d, width 1–2 px, bowed by up to d/12, tapered to 60 % at its
    ends; level μ ± 4·std (bright two times in three), anti-aliased by distance."""
    th, width = rng.uniform(0, np.pi), rng.uniform(1.0, 2.0)
    bow = rng.uniform(-1, 1) * d / 12
    t = np.linspace(-(d - 1) / 2, (d - 1) / 2, 4 * d)
    px = t * np.cos(th) - bow * (1 - (2 * t / d) ** 2) * np.sin(th)
    py = t * np.sin(th) + bow * (1 - (2 * t / d) ** 2) * np.cos(th)
    dist2 = (x[..., None] - px) ** 2 + (y[..., None] - py) ** 2
    near = np.argmin(dist2, axis=-1)
    a = np.clip(width / 2 + 0.5 - np.sqrt(dist2.min(-1)), 0, 1)
    a *= 1 - 0.4 * (2 * t[near] / d) ** 4
    target = mu + rng.choice([-1, 1, 1]) * 4.0 * sd
    return p * (1 - a) + a * (target + 0.2 * (p - mu)), a > 0.15


def _hole(p, x, y, d, rng, mu, sd):
    """Round pit: interior radius d/2 − w (rim width w = max(1, d/10)) at μ − 4.5·std with
    its far wall lit (+0.8·std), and a raised rim μ + 2·std (brighter towards the light)."""
    r = d / 2
    w = max(1.0, d / 10)
    a, rho = _alpha(x, y, r - w, rng, 0.08, 0.7)
    rho = rho * (r - w)
    lit = (x + y) / (r * np.sqrt(2))
    inner = max(4.0, mu - 4.5 * sd) + 0.8 * sd * lit
    new = p * (1 - a) + a * (inner + 0.15 * (p - mu))
    rim = np.exp(-(((rho - (r - w / 2)) / (0.6 * w)) ** 2)) * (1 - a) * (rho <= r)
    new = new + 0.85 * rim * (mu + 2 * sd * (1 - 0.4 * lit) - new)
    return new, (a > 0.3) | (rim > 0.3)


def _stain(p, x, y, d, rng, mu, sd):
    """Soft irregular blob (edge d/5): shift ±2.4·std (dark three times in four), texture
    damped by 45 % inside, tide line 0.8·std at its edge (4α(1 − α))."""
    a, _ = _alpha(x, y, d / 2, rng, 0.3, d / 5)
    sign = rng.choice([-1, -1, -1, 1])
    tide = 4 * a * (1 - a)
    new = p + a * sign * 2.4 * sd - 0.45 * a * (p - mu) + 0.8 * sign * sd * tide
    return new, a > 0.2


SHAPES = {"speck": _speck, "scratch": _scratch, "hole": _hole, "stain": _stain}


def _flaw(img: np.ndarray, kind: str, rng: np.random.Generator, size_px: int | None):
    """`local_flaw` plus (d, cx, cy). d: given, or U(6, 20) (scratch U(10, 20)) · size/256;
    the centre is uniform over positions that keep the flaw's window inside the image;
    std = the image's std, μ = the window's mean; noise N(0, 1.6²) is re-added in
    proportion to the change (|Δ|/std, at most 1) so the flaw is not smoother than its
    surroundings."""
    if kind not in SHAPES:
        raise ValueError(f"unknown local flaw {kind!r}: use one of {', '.join(LOCAL_KINDS)}")
    h, w = img.shape
    lo = 10 if kind == "scratch" else 6
    d = int(size_px) if size_px else int(round(rng.uniform(lo, 20) * min(h, w) / 256))
    half = d // 2 + 2
    if d < 3 or 2 * half + 1 > min(h, w):
        raise ValueError(f"flaw size {d} px does not fit a {w}x{h} image")
    cx, cy = int(rng.integers(half, w - half)), int(rng.integers(half, h - half))
    win = (slice(cy - half, cy + half + 1), slice(cx - half, cx + half + 1))
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    p, sd = img[win].astype(np.float64), float(img.std())
    new, m = SHAPES[kind](p, x, y, d, rng, float(p.mean()), sd)
    weight = np.clip(np.abs(new - p) / sd, 0, 1)
    new = new + 1.6 * weight * rng.standard_normal(p.shape)
    out, mask = img.copy(), np.zeros_like(img)
    out[win] = np.clip(np.rint(new), 0, 255).astype(np.uint8)
    mask[win] = np.where(m, 255, 0).astype(np.uint8)
    return out, mask, (d, cx, cy)


def local_flaw(
    img: np.ndarray, kind: str, rng: np.random.Generator, size_px: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`img` (uint8 [H, W]) with one flaw of `kind` of extent `size_px` (default drawn in
    6–20 px, scratch 10–20 px, times H/256), and its mask (uint8 0/255, the visible pixels)."""
    out, mask, _ = _flaw(img, kind, rng, size_px)
    return out, mask


# ------------------------------------------------------------------ sets


def _stream(seed: int, *names: str) -> np.random.Generator:
    """Independent stream per (seed, names): SeedSequence([seed, crc32(name), ...])."""
    return np.random.default_rng([seed, *(zlib.crc32(n.encode()) for n in names)])


def _save(arr: np.ndarray, path: Path) -> None:
    """Write a uint8 array as PNG (no metadata, so the bytes depend only on the pixels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def write_set(
    root,
    family: str,
    size: int = 256,
    seed: int = 0,
    n_good: int = 60,
    n_train: int = 8,
    n_local: int = 6,
    n_global: int = 6,
    *,
    flaw_px: int | None = None,
    globals_inside: bool = False,
) -> Path:
    """Write one family's set (layout in the module docstring) and return ROOT/<family>.

    Streams: good, train, each local kind and each global kind draw from their own
    generator (:func:`_stream` of seed, family, split). anoclip's folder reader needs a mask
    for every image of a category that has a masks/ folder, so global changes go to the
    sibling category ROOT/<family>_global (with copies of good/ and train/good) unless
    `globals_inside` (the reader then rejects ROOT/<family>: "missing mask")."""
    root = Path(root)
    base = root / family
    glob = base if globals_inside else root / f"{family}_global"
    rows = []
    for split, n, folder in (("good", n_good, "good"), ("train", n_train, "train/good")):
        rng = _stream(seed, family, split)
        for i in range(n):
            _save(good_image(family, size, rng), base / folder / f"{i:03d}.png")
            rows.append((f"{family}/{folder}/{i:03d}.png", 0, split, "", "", ""))
    for kind in LOCAL_KINDS:
        rng = _stream(seed, family, kind)
        for i in range(n_local):
            img, mask, (d, cx, cy) = _flaw(good_image(family, size, rng), kind, rng, flaw_px)
            _save(img, base / kind / f"{i:03d}.png")
            _save(mask, base / "masks" / kind / f"{i:03d}_mask.png")
            rows.append((f"{family}/{kind}/{i:03d}.png", 1, kind, d, cx, cy))
    for kind in GLOBAL_KINDS:
        rng = _stream(seed, family, f"global_{kind}")
        for i in range(n_global):
            path = glob / f"global_{kind}" / f"{i:03d}.png"
            _save(global_change(family, kind, size, rng), path)
            rows.append((path.relative_to(root).as_posix(), 1, f"global_{kind}", "", "", ""))
    if glob != base:
        for folder in ("good", "train/good"):
            shutil.copytree(base / folder, glob / folder, dirs_exist_ok=True)
    with open(base / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(("path", "label", "kind", "flaw_px", "cx", "cy"))
        out.writerows(rows)
    return base


# ------------------------------------------------------------------ contact sheet


def _tile(path: Path, tile: int, crop: bool, mask: Path | None = None):
    """(grey uint8 [tile, tile], outline bool [tile, tile]): the image resized to `tile` px
    (Lanczos), or with `crop` its native-resolution tile×tile window about the flaw (the
    mask's centre; the image centre without a mask). The outline is the mask's, drawn 2 px
    outside the flaw so the flaw itself stays visible."""
    img = Image.open(path).convert("L")
    m = Image.open(mask).convert("L") if mask else Image.new("L", img.size, 0)
    if crop and tile < min(img.size):
        ys, xs = np.nonzero(np.asarray(m))
        cx, cy = (xs.mean(), ys.mean()) if xs.size else (img.width / 2, img.height / 2)
        x0 = int(np.clip(round(cx - tile / 2), 0, img.width - tile))
        y0 = int(np.clip(round(cy - tile / 2), 0, img.height - tile))
        img, m = (a.crop((x0, y0, x0 + tile, y0 + tile)) for a in (img, m))
    else:
        img, m = img.resize((tile, tile), Image.LANCZOS), m.resize((tile, tile), Image.BILINEAR)
    on = np.asarray(m) > 60
    ring = ndimage.binary_dilation(on, iterations=3) & ~ndimage.binary_dilation(on, iterations=2)
    return np.asarray(img), ring


def contact_sheet(root, families, out, tile: int = 256, crop: bool = False, levels: int = 256):
    """One row per family: good 000–002, each local flaw 000 (mask outline dashed black and
    white), each global change 000, read from the sets under `root`. A greyscale PNG; with
    `levels` < 256 the greys are rounded to that many levels (smaller files)."""
    root, pad, head, left = Path(root), 4, 14, 70
    names = ["good", "good", "good", *LOCAL_KINDS, *(f"global_{k}" for k in GLOBAL_KINDS)]
    shape = (len(families) * (tile + head), left + len(names) * (tile + pad))
    grey, ring = np.zeros(shape, np.uint8), np.zeros(shape, bool)
    labels = []
    for r, fam in enumerate(families):
        base, y = root / fam, r * (tile + head) + head
        glob = base if (base / "global_scale").is_dir() else root / f"{fam}_global"
        labels.append(((4, y + tile // 2), fam))
        for c, name in enumerate(names):
            i, x = (c if c < 3 else 0), left + c * (tile + pad)
            folder = glob if name.startswith("global_") else base
            mask = base / "masks" / name / f"{i:03d}_mask.png" if name in LOCAL_KINDS else None
            g, edge = _tile(folder / name / f"{i:03d}.png", tile, crop, mask)
            grey[y : y + tile, x : x + tile], ring[y : y + tile, x : x + tile] = g, edge
            labels.append(((x + 2, y - head + 1), name.replace("global_", "global: ")))
    step = 256 / levels
    grey = np.clip(np.floor(grey / step) * step + step / 2, 0, 255).astype(np.uint8)
    yy, xx = np.nonzero(ring)
    grey[yy, xx] = np.where((xx + yy) // 2 % 2 == 0, 0, 255)
    img = Image.fromarray(grey)
    draw = ImageDraw.Draw(img)
    for xy, text in labels:
        draw.text(xy, text, fill=255)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, optimize=True)
    return out


def main(argv=None) -> None:
    """CLI: write the sets of --families under --out, print one line per family, and the
    contact sheet if --sheet."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--flaw-px", type=int, default=None, help="flaw extent (default: drawn)")
    ap.add_argument("--sheet", type=Path, default=None, help="contact sheet PNG")
    ap.add_argument("--sheet-tile", type=int, default=256, help="tile size on the sheet (px)")
    ap.add_argument(
        "--sheet-crop", action="store_true", help="tiles are native-resolution crops, not resized"
    )
    ap.add_argument("--sheet-levels", type=int, default=256, help="grey levels on the sheet")
    args = ap.parse_args(argv)
    for fam in args.families:
        t0 = time.perf_counter()
        base = write_set(args.out, fam, args.size, args.seed, flaw_px=args.flaw_px)
        print(
            f"{fam}: 60 good, 8 train/good, {len(LOCAL_KINDS)} local x 6 (masks), "
            f"{len(GLOBAL_KINDS)} global x 6 -> {base} and {base}_global "
            f"({time.perf_counter() - t0:.1f} s)"
        )
    if args.sheet:
        opts = (args.sheet_tile, args.sheet_crop, args.sheet_levels)
        print(f"sheet: {contact_sheet(args.out, args.families, args.sheet, *opts)}")


if __name__ == "__main__":
    main()
