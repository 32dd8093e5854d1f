"""Speed, measured against the real reference and a real peer, in one run.

Rows (per-image times, medians; random weights, speed does not depend on their values):

* **AnoVL loop**: the official code's per-image loop, :class:`tests.oracles.AnoVLLoop` (22
  views as one batch through the dual-path encoder, the identity view again alone, 5 AdamW
  steps of an nn.Linear text adapter, batch size 1; its docstring says what it mirrors).
  Its outputs equal anoclip's (tests/integration/test_speed.py; printed below too).
* **anoclip fp32** rows: ``Detector.predict`` with the default settings (22-view score, 5 TTA
  steps), each row one lever on the 21 augmented views of the image score, all keeping
  float32 outputs (max |Δ| printed): open_clip's own forward (the previous default), fused
  attention with a CLS-only last block (the default now, ``anoclip.clip.plain.plain_cls``),
  1 thread, batch 1, torch.compile (inductor, freezing), ONNX Runtime and OpenVINO (f32
  hint; ``view_engine="onnxruntime"`` / ``"openvino"``).
* **Reduced precision** (opt-in, ``Runtime(precision=...)``): bf16 CPU autocast, dynamic int8
  Linear layers; plus OpenVINO with its bf16 hint for the views. Drift vs fp32 is printed:
  max |Δscore| and the maps' centred relative error ‖Δm‖ / ‖m − mean(m)‖.
* **Single view** (TF-1IMG cost class): anoclip ``image_score="cls"``, no TTA, beside
  anomalib's WinCLIP zero-shot (random weights) at batch 1 and 8.

Method: every configuration runs in its own process (peak RSS is its own), in ``--rounds``
rounds whose order alternates (forward, then reversed), so slow drifts of this shared
machine's load hit every row alike; each round warms up on one image first. The text
embeddings are computed once (a one-time cost per object, printed) and handed to every
process. Ratios are against the AnoVL loop of the same run. FLOPs are counted with
torch's FlopCounterMode. The FLOP floor is FLOPs / matmul rate, with two rates: the rate
the row's own process sustains in 1-s probes right before and after each of its timed
calls (:class:`Probe`, "of floor"), and the run's peak: the highest rate measured
anywhere in it, 0.1-s bursts at its start and end (best of MKL and oneDNN float32, int8
for the int8 row's views) and every probe ("of peak"). This machine's throughput drifts
by up to 2x within minutes, so the peak is the luckiest second of a 30-minute run and its
column is a lower bound; the probed rate is what the machine gave the row. "at same"
rescales the ratio vs AnoVL to equal matmul rates (t · probed rate).

    python benchmarks/speed.py                            # ViT-B-16-plus-240, ~20-25 min
    python benchmarks/speed.py --model tiny --images 4    # quick

Needs ``pip install -e ".[bench,export]"`` (anomalib; onnxruntime, openvino); rows whose
package is missing are skipped with the reason (and so is the cost model's WinCLIP line).
"""

from __future__ import annotations

import argparse
import glob
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MODELS = {"tiny": str(SHARED / "models" / "tiny-clip-12l.json"), "vitb": "ViT-B-16-plus-240"}
IMAGES = str(SHARED / "data" / "mvtec_ad" / "screw" / "test" / "*" / "*.png")
OBJECT = "screw"


@dataclass(frozen=True)
class Config:
    """One row: `kind` anovl | anoclip | winclip; `views` the plain-view lever; `options`
    Detector keyword overrides; `batch` images per call; `threads` torch threads."""

    name: str
    kind: str
    views: str = "fused"
    options: dict = field(default_factory=dict)
    batch: int | None = None
    threads: int | None = None
    tta: bool = True
    group: str = "fp32"


CONFIGS = (
    Config("AnoVL loop (reference)", "anovl", batch=1, group="ref"),
    Config("fp32 open_clip views (before)", "anoclip", options={"view_engine": "open_clip"}),
    Config("fp32 fused views (default)", "anoclip"),
    Config("fp32 default, 1 thread", "anoclip", threads=1),
    Config("fp32 default, batch 1", "anoclip", batch=1),
    Config("fp32 views torch.compile", "anoclip", views="compile"),
    Config("fp32 views ONNX Runtime", "anoclip", options={"view_engine": "onnxruntime"}),
    Config("fp32 views OpenVINO f32", "anoclip", options={"view_engine": "openvino"}),
    Config("bf16 (precision=bf16)", "anoclip", options={"precision": "bf16"}, group="low"),
    Config("int8 (precision=int8)", "anoclip", options={"precision": "int8"}, group="low"),
    Config(
        "bf16 + OpenVINO bf16 views",
        "anoclip",
        options={"precision": "bf16", "view_engine": "openvino"},
        group="low",
    ),  # fmt: skip
    Config(
        "anoclip cls, no TTA", "anoclip", options={"image_score": "cls"}, tta=False, group="1view"
    ),  # fmt: skip
    Config("WinCLIP (anomalib) b1", "winclip", batch=1, group="1view"),
    Config("WinCLIP (anomalib) b8", "winclip", batch=8, group="1view"),
)
BEFORE = "fp32 open_clip views (before)"  # the fp32 outputs every row is compared with


# ----------------------------------------------------------------------------- workers


def load(model_key: str):
    from anoclip import load_backbone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_backbone(MODELS[model_key], "none", device="cpu", seed=0)


def text_worker(model_key: str, out: str) -> None:
    """Encode the object's prompt ensemble once (anoclip's default "full" text path)."""
    from anoclip.clip.prompts import is_texture, prompt_name
    from anoclip.clip.text import build_text_bank

    backbone = load(model_key)
    start = time.perf_counter()
    bank = build_text_bank(backbone, prompt_name(OBJECT), is_texture(OBJECT))
    seconds = time.perf_counter() - start
    torch.save({"bank": bank, "seconds": seconds}, out)


def preload_text(det, bank) -> None:
    """Fill the Detector's text cache with the bank encoded once in this run (a private
    attribute: the benchmark's only shortcut; the per-object cost is reported apart)."""
    s = det.settings
    key = (det.backbone.key, bank.name, bank.texture, s.text_ensemble, s.text_tokens)
    det._text._banks[key] = bank


def views_lever(kind: str, visual: torch.nn.Module):
    """The plain-view function images `[B, 3, S, S]` -> CLS `[B, C]` of the one lever the
    package does not offer, ``torch.compile`` (inductor, freezing: weights folded as
    constants, float32 GEMMs by oneDNN) of :class:`anoclip.clip.plain.PlainCLS`. Compilation
    happens on first call (timed by the caller as setup)."""
    import torch._inductor.config as inductor

    from anoclip.clip.plain import PlainCLS

    assert kind == "compile", kind
    inductor.freezing = True
    compiled = torch.compile(PlainCLS(visual).eval(), dynamic=True)
    return lambda x: compiled(x)


def run_anovl(cfg: Config, model_key: str, paths: list[str], bank) -> dict:
    sys.path.insert(0, str(REPO))
    from tests.oracles import AnoVLLoop

    loop = AnoVLLoop(load(model_key), OBJECT, text=(bank.features, bank.sentences))
    loop.predict(paths[0])  # warm-up
    probe = Probe()
    times, outs = [], []
    for path in paths:
        probe()
        start = time.perf_counter()
        score, amap = loop.predict(path)
        times.append(time.perf_counter() - start)
        outs.append((score, amap.numpy()))
    probe()
    return {"times": times, "outs": outs, "rates": probe.rates}


def run_anoclip(cfg: Config, model_key: str, paths: list[str], bank, batch: int):
    from anoclip import Detector

    det = Detector(backbone=load(model_key), batch_size=cfg.batch or batch, **cfg.options)
    preload_text(det, bank)
    setup = 0.0
    if cfg.views != "fused":  # a lever the package does not offer: its views function
        start = time.perf_counter()
        forward = views_lever(cfg.views, det.backbone.model.visual)
        det._plain_forward = forward  # private, like preload_text
        setup = time.perf_counter() - start
    start = time.perf_counter()
    det.predict(paths[:1], OBJECT, tta=cfg.tta)  # warm-up (compiles, builds int8 weights)
    setup += time.perf_counter() - start
    step = cfg.batch or batch
    probe = Probe(("fp32", "int8") if cfg.options.get("precision") == "int8" else ("fp32",))
    times, outs = [], []
    for k in range(0, len(paths), step):
        chunk = paths[k : k + step]
        probe()
        start = time.perf_counter()
        preds = det.predict(chunk, OBJECT, tta=cfg.tta)
        times += [(time.perf_counter() - start) / len(chunk)] * len(chunk)
        outs += [(p.score, p.anomaly_map) for p in preds]
    probe()
    return {"times": times, "outs": outs, "setup_s": setup, "rates": probe.rates}


def winclip_model(model_key: str):
    """anomalib's WinCLIP zero-shot model with random weights (its module's pretrained tag
    set to None before building), made to compute what WinCLIP means with open_clip 3.x.

    anomalib 2.7.0 permutes the window sequences to (L, N, D) before open_clip's
    transformer, which open_clip >= 2.24 runs batch-first: as shipped, the window pass
    would attend across windows instead of within one. The transformer's `batch_first`
    flag is turned off around that pass only, so it transposes back (checked: window
    embeddings then equal a per-window forward to ~1e-6).
    """
    import open_clip
    from anomalib.models.image.winclip import torch_model as wc

    if model_key == "tiny":
        open_clip.add_model_config(MODELS["tiny"])
        wc.BACKBONE = Path(MODELS["tiny"]).stem
    wc.PRETRAINED = None
    torch.manual_seed(0)
    model = wc.WinClipModel(class_name=OBJECT).eval()
    window_pass = model._get_window_embeddings
    transformer = model.clip.visual.transformer

    def fixed(feature_map, masks):
        transformer.batch_first = False
        try:
            return window_pass(feature_map, masks)
        finally:
            transformer.batch_first = True

    model._get_window_embeddings = fixed
    return model


def run_winclip(cfg: Config, model_key: str, paths: list[str]) -> dict:
    from anoclip.data.loading import Preparer

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = winclip_model(model_key)
    setup = time.perf_counter() - start
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    prep = Preparer(model.clip.visual.image_size[0], OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
    times, probe = [], Probe()
    with torch.inference_mode():
        model(prep.prepare(paths[0]).tiles)  # warm-up
        for k in range(0, len(paths), cfg.batch):
            chunk = paths[k : k + cfg.batch]
            probe()
            start = time.perf_counter()
            x = torch.cat([prep.prepare(p).tiles for p in chunk])  # decoding included
            out = model(x)
            out.anomaly_map.numpy()
            times += [(time.perf_counter() - start) / len(chunk)] * len(chunk)
    probe()
    return {"times": times, "outs": [], "setup_s": setup, "rates": probe.rates}


def worker(cfg: Config, model_key: str, paths: list[str], text: str, batch: int, out: str):
    warnings.simplefilter("ignore")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    bank = torch.load(text, weights_only=False)["bank"]
    if cfg.kind == "anovl":
        res = run_anovl(cfg, model_key, paths, bank)
    elif cfg.kind == "anoclip":
        res = run_anoclip(cfg, model_key, paths, bank, batch)
    else:
        res = run_winclip(cfg, model_key, paths)
    res["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    outs = res.pop("outs")
    np.savez(out, *[o[1] for o in outs], scores=np.array([o[0] for o in outs]))
    Path(out + ".json").write_text(json.dumps(res))


def spawn(target, *args) -> None:
    proc = mp.get_context("spawn").Process(target=target, args=args)
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"{target.__name__}{args[:1]} failed (exit {proc.exitcode})")


def measure(cfg, model_key, paths, text, batch, tmp, tag) -> tuple[dict, dict]:
    """One row's round in its own process; a result already in `tmp` (--workdir) is kept."""
    out = str(Path(tmp) / f"{tag}.npz")
    if not Path(out + ".json").exists():
        spawn(worker, cfg, model_key, paths, text, batch, out)
    res = json.loads(Path(out + ".json").read_text())
    with np.load(out) as z:
        maps = [z[f"arr_{i}"] for i in range(len(z.files) - 1)]
        res["scores"], res["maps"] = z["scores"], maps
    return res


# ----------------------------------------------------------------------------- FLOPs


def matmul_calls(n: int, kinds: tuple[str, ...]) -> dict[str, Callable[[], object]]:
    """n×n matmuls by kind: "fp32_mkl" (``a @ b``), "fp32_onednn" (mkldnn linear), "bf16",
    "int8" (dynamic int8 Linear, fbgemm); only the `kinds` asked for are built."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    lin = torch.nn.Linear(n, n, bias=False)
    calls: dict[str, Callable[[], object]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if "fp32_mkl" in kinds:
            calls["fp32_mkl"] = lambda: a @ b
        if "fp32_onednn" in kinds:
            from torch.utils import mkldnn

            dnn = mkldnn.to_mkldnn(torch.nn.Sequential(lin))
            calls["fp32_onednn"] = lambda: dnn(a)
        if "bf16" in kinds:
            a16, b16 = a.bfloat16(), b.bfloat16()
            calls["bf16"] = lambda: a16 @ b16
        if "int8" in kinds:
            from torch.ao.quantization import quantize_dynamic

            q8 = quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear})
            calls["int8"] = lambda: q8(a)
    return calls


def matmul_rates(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Peak matmul rates (FLOP/s, best of `repeats` bursts) of :func:`matmul_calls`;
    "fp32" = the better of MKL and oneDNN."""
    from anoclip.clip.features import cpu_has_bf16

    kinds = ("fp32_mkl", "fp32_onednn", "int8")
    if cpu_has_bf16():  # else hundreds of times slower than fp32: not timed
        kinds += ("bf16",)
    rates = {}
    with torch.inference_mode():
        for name, call in matmul_calls(n, kinds).items():
            call()
            best = min(_timed(call) for _ in range(repeats))
            rates[name] = 2 * n**3 / best
    rates["fp32"] = max(rates["fp32_mkl"], rates["fp32_onednn"])
    return rates


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


class Probe:
    """The matmul rate the machine sustains *now*, measured beside a row's timed calls.

    This shared machine's throughput drifts by up to 2x within minutes, so a floor taken
    from one short burst (:func:`matmul_rates`) is mostly a measure of the luckiest second
    of the run. :meth:`__call__` runs n×n float32 matmuls (and dynamic int8 Linear calls
    for the reduced rows) back to back for `seconds` in the row's own process and thread
    count, right before and right after each timed call; the row's floor uses the median of
    those rates. Probe time is not part of any row's time.
    """

    def __init__(self, kinds: tuple[str, ...] = ("fp32",), seconds: float = 1.0, n: int = 2048):
        self.seconds, self.n = seconds, n
        calls = matmul_calls(n, tuple("fp32_mkl" if k == "fp32" else k for k in kinds))
        self.calls = {("fp32" if k == "fp32_mkl" else k): c for k, c in calls.items()}
        self.rates: dict[str, list[float]] = {k: [] for k in self.calls}

    def __call__(self) -> None:
        with torch.inference_mode():
            for kind, call in self.calls.items():
                call()
                count, start = 0, time.perf_counter()
                while (elapsed := time.perf_counter() - start) < self.seconds:
                    call()
                    count += 1
                self.rates[kind].append(2 * self.n**3 * count / elapsed)


def flops(fn, *args) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return float(counter.get_total_flops())


def cost_model(model_key: str, bank) -> dict[str, float]:
    """Forward FLOPs per image: V-V encoder pass, plain tower (open_clip / fused CLS-only),
    TTA (5 steps, forward + backward), WinCLIP zero-shot, one mutual reference."""
    from anoclip.clip.encoder import VVEncoder
    from anoclip.clip.plain import plain_forward
    from anoclip.clip.tta import adapt_tokens
    from anoclip.settings import Settings

    backbone = load(model_key)
    visual = backbone.model.visual
    s = backbone.image_size
    x = torch.randn(1, 3, s, s)
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused MHA kernel is not counted
    try:
        with torch.inference_mode():
            enc = VVEncoder(visual)
            f_vv = flops(enc, x)
            f_plain = flops(visual, x)
            f_fused = flops(plain_forward(visual), x)
            f_wc, wc_missing = winclip_flops(model_key, x)
            tokens = enc(x).vv[enc.depth].float()
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    gen = torch.Generator().manual_seed(0)
    f_tta = flops(adapt_tokens, tokens, bank.features, bank.sentences, Settings(), gen)
    length, dim = tokens.shape[1:]
    return {"vv": f_vv, "plain": f_plain, "fused": f_fused, "tta": f_tta, "winclip": f_wc,
            "winclip_missing": wc_missing, "ref": 2.0 * length * length * dim,
            "tokens": length}  # fmt: skip


def winclip_flops(model_key: str, x: torch.Tensor) -> tuple[float, str | None]:
    """(WinCLIP's forward FLOPs, None), or (NaN, why) when anomalib is not installed."""
    why = available(Config("WinCLIP", "winclip"))
    if why is not None:
        return float("nan"), why
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wc = winclip_model(model_key)
    except ImportError as exc:  # installed, but a dependency of it is not
        return float("nan"), f"cannot import anomalib's WinCLIP: {exc}"
    return flops(wc, x), None


# ----------------------------------------------------------------------------- report


def drift(res: dict, base: dict) -> tuple[float, float, float]:
    """(max |Δscore|, max |Δmap|, max centred relative map error) against `base`."""
    if not len(res["scores"]) or not len(base["scores"]):
        return float("nan"), float("nan"), float("nan")
    n = min(len(res["scores"]), len(base["scores"]))
    ds = float(np.abs(res["scores"][:n] - base["scores"][:n]).max())
    dm = max(float(np.abs(a - b).max()) for a, b in zip(res["maps"][:n], base["maps"][:n]))
    rel = max(
        float(np.linalg.norm(a - b) / np.linalg.norm(b - b.mean()))
        for a, b in zip(res["maps"][:n], base["maps"][:n])
    )
    return ds, dm, rel


def available(cfg: Config) -> str | None:
    """Why a row cannot run here (a missing optional package), or None."""
    need = []
    if cfg.options.get("view_engine") in ("openvino", "onnxruntime"):
        need = [cfg.options["view_engine"], "onnx"]
    if cfg.kind == "winclip":
        need = ["anomalib"]
    import importlib.util

    if cfg.options.get("precision") == "bf16":
        from anoclip.clip.features import cpu_has_bf16

        if not cpu_has_bf16():
            return "not supported: this CPU has no bf16 kernels (AVX512 / AMX); anoclip refuses it"
    missing = [m for m in need if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    return f"not installed: {', '.join(missing)} (pip install -e '.[bench,export]')"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="vitb", choices=list(MODELS))
    p.add_argument("--images", type=int, default=3, help="timed images per round and row")
    p.add_argument("--anovl-images", type=int, default=2, help="... for the AnoVL loop")
    p.add_argument("--batch-size", type=int, default=3, help="anoclip's batch size")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--only", nargs="*", help="row names (substrings) to run")
    p.add_argument("--workdir", help="keep text and per-row results here; a rerun with the same "
                   "arguments reuses them (finishes a run killed midway)")  # fmt: skip
    args = p.parse_args(argv)
    all_paths = sorted(glob.glob(IMAGES))
    if len(all_paths) < max(8, args.images):
        print(f"need 8 images under {IMAGES}", file=sys.stderr)
        return 2
    configs = [c for c in CONFIGS if not args.only or any(o in c.name for o in args.only)]
    skipped = {c.name: why for c in configs if (why := available(c))}
    configs = [c for c in configs if c.name not in skipped]
    start_run = time.perf_counter()
    print(f"CPU {cpu_name()} ({torch.backends.cpu.get_cpu_capability()} kernels); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; model {args.model}; "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")  # fmt: skip
    rates = matmul_rates()
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.workdir or scratch
        Path(tmp).mkdir(parents=True, exist_ok=True)
        text = str(Path(tmp) / "text.pt")
        if not Path(text).exists():
            spawn(text_worker, args.model, text)
        text_s = torch.load(text, weights_only=False)["seconds"]
        results: dict[str, list[dict]] = {c.name: [] for c in configs}
        for r in range(args.rounds):
            order = configs if r % 2 == 0 else configs[::-1]
            for cfg in order:
                n = args.anovl_images if cfg.kind == "anovl" else max(args.images, cfg.batch or 0)
                chunk = all_paths[:n]  # the same images in every row and round
                tag = f"r{r}-{configs.index(cfg)}"
                res = measure(cfg, args.model, chunk, text, args.batch_size, tmp, tag)
                results[cfg.name].append(res)
                t = statistics.median(res["times"])
                load = os.getloadavg()[0]
                print(
                    f"  round {r + 1}: {cfg.name:30s} {t:8.3f} s/img (load {load:.2f})", flush=True
                )
        bank = torch.load(text, weights_only=False)["bank"]
    cost = cost_model(args.model, bank)
    rates2 = matmul_rates()
    rates = {k: max(v, rates2[k]) for k, v in rates.items()}
    report(args, configs, results, rates, cost, text_s, skipped)
    print(f"\nwhole run {time.perf_counter() - start_run:.0f} s; load average now "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")  # fmt: skip
    return 0


def per_image_flops(cfg: Config, cost: dict) -> dict[str, float]:
    """Forward FLOPs per image of a row by the matmul rate that bounds them: "fp32", or
    "int8" for the 21 views of the int8 row (its encoder, TTA, attention stay float32),
    "bf16" for the bf16 rows (autocast covers the whole forward)."""
    views = cfg.options.get("image_score", "cls_aug22") == "cls_aug22"
    tta = cost["tta"] if cfg.tta else 0.0
    if cfg.kind == "anovl":
        return {"fp32": 23 * cost["vv"] + tta}
    if cfg.kind == "winclip":
        return {"fp32": cost["winclip"]}
    plain = cost["plain"] if cfg.options.get("view_engine") == "open_clip" else cost["fused"]
    precision = cfg.options.get("precision", "fp32")
    rest, view_flops = cost["vv"] + tta, 21 * plain if views else 0.0
    if precision == "bf16":
        return {"bf16": rest + view_flops}
    if precision == "int8":
        return {"fp32": rest, "int8": view_flops}
    return {"fp32": rest + view_flops}


def floor_seconds(parts: dict[str, float], rates: dict[str, float]) -> float:
    """Σ_k FLOPs_k / rate_k: the time at the matmul rates `rates` (FLOP/s)."""
    return sum(f / rates[k] for k, f in parts.items())


def report(args, configs, results, rates, cost, text_s, skipped) -> None:
    merged, peak = {}, dict(rates)
    for name, runs in results.items():
        probed: dict[str, list[float]] = {}
        for r in runs:
            for kind, values in r.get("rates", {}).items():
                probed.setdefault(kind, []).extend(values)
        for kind, values in probed.items():
            peak[kind] = max(peak.get(kind, 0.0), *values)
        merged[name] = {
            "times": [t for r in runs for t in r["times"]],
            "rss": max(r["rss_mb"] for r in runs),
            "setup": max(r.get("setup_s", 0.0) for r in runs),
            "scores": runs[0]["scores"],
            "maps": runs[0]["maps"],
            "rates": {k: statistics.median(v) for k, v in probed.items()},
        }
    bursts = ", ".join(f"{k} {v / 1e9:.0f}" for k, v in rates.items())
    peaks = ", ".join(f"{k} {peak[k] / 1e9:.0f}" for k in ("fp32", "int8") if k in peak)
    print(f"\nMatmul rates (GFLOP/s, n=2048): best 0.1-s burst at the run's start and end "
          f"{bursts}; peak (the highest burst or 1-s probe of the run) {peaks}")  # fmt: skip
    print(f"Text embeddings, once per object (2 × 462 sentences): {text_s:.1f} s\n")
    first = CONFIGS[0].name
    ref = statistics.median(merged[first]["times"]) if first in merged else None
    ref_rate = merged[first]["rates"].get("fp32") if first in merged else None
    base = merged.get(BEFORE)
    head = (f"{'configuration':32s} {'s/img':>8s} {'vs AnoVL':>9s} {'at same':>8s} "
            f"{'GFLOP/img':>10s} {'GFLOP/s':>8s} {'floor s':>8s} {'of floor':>9s} "
            f"{'of peak':>8s} {'RSS MB':>7s} {'max|Δs|':>9s} {'max|Δm|':>9s} {'map rel':>9s} "
            f"{'setup s':>8s}")  # fmt: skip
    print(head)
    print("-" * len(head))
    for cfg in configs:
        m = merged[cfg.name]
        t = statistics.median(m["times"])
        parts = per_image_flops(cfg, cost)
        row_rates = {k: m["rates"].get(k, rates.get(k, float("nan"))) for k in parts}
        floor = floor_seconds(parts, row_rates)
        at_peak = floor_seconds(parts, peak) if all(k in peak for k in parts) else float("nan")
        ratio = f"{ref / t:8.2f}x" if ref else ""
        rate = m["rates"].get("fp32")
        same = f"{ref * ref_rate / (t * rate):7.2f}x" if ref and ref_rate and rate else ""
        same_work = base and cfg.group != "1view"
        ds, dm, rel = drift(m, base) if same_work else (np.nan,) * 3
        print(f"{cfg.name:32s} {t:8.3f} {ratio:>9s} {same:>8s} {sum(parts.values()) / 1e9:10.1f} "
              f"{row_rates.get('fp32', float('nan')) / 1e9:8.0f} {floor:8.3f} {floor / t:8.0%} "
              f"{at_peak / t:7.0%} {m['rss']:7.0f} {ds:9.1e} {dm:9.1e} {rel:9.1e} "
              f"{m['setup']:8.1f}")  # fmt: skip
    for name, why in skipped.items():
        print(f"{name:32s} skipped: {why}")
    print("\nΔ columns: against the fp32 open_clip-views row (the previous default, eager fp32);"
          "\n'map rel' = max over images of ‖Δm‖ / ‖m − mean(m)‖ (maps at the image size)."
          "\n'GFLOP/s' = the float32 matmul rate (n=2048) the row's own process sustained in"
          "\n1-s probes right before and after each timed call (median; int8 probed too for"
          "\nthe int8 row). 'floor s' = Σ FLOPs / that rate: float32 FLOPs at the fp32 rate,"
          "\nthe int8 row's 21 views at its int8 rate. 'of floor' = floor s / measured time."
          "\n'of peak' = the same at the run's peak rates (a lower bound: no row had the"
          "\nmachine at its best second throughout). 'at same' = the ratio vs AnoVL with both"
          "\ntimes scaled to the same matmul rate, t·GFLOP/s (this machine drifts by up to 2x"
          "\nwithin minutes; 'vs AnoVL' is the raw ratio of medians)."
          "\n'setup s' = one-time work per process (warm-up image, compile, export, int8 weights)."
          f"\nTimes: medians over {args.rounds} alternating rounds.")  # fmt: skip
    print_cost(cost)


def print_cost(cost: dict) -> None:
    g = 1e9
    vv, plain, fused, tta, ref = cost["vv"], cost["plain"], cost["fused"], cost["tta"], cost["ref"]
    print("\nCost model (forward FLOPs per image, GFLOP; TTA = 5 steps forward + backward):")
    rows = [
        ("AnoVL loop: 23 dual-path passes + TTA", 23 * vv + tta),
        ("anoclip 22 views: 1 dual-path + 21 open_clip + TTA", vv + 21 * plain + tta),
        ("anoclip 22 views: 1 dual-path + 21 fused CLS-only + TTA", vv + 21 * fused + tta),
        ("anoclip 1 view + TTA", vv + tta),
        ("anoclip 1 view, no TTA (cls)", vv),
        ("WinCLIP zero-shot (1 image + 2 window scales)", cost["winclip"]),
    ]
    for name, f in rows:
        if name.startswith("WinCLIP") and cost.get("winclip_missing"):
            print(f"  {name:58s} {'-':>9s}  {cost['winclip_missing']}")
            continue
        print(f"  {name:58s} {f / g:9.2f}")
    print(f"  {'one dual-path pass / open_clip pass / fused CLS-only pass':58s} "
          f"{vv / g:.2f} / {plain / g:.2f} / {fused / g:.2f}")  # fmt: skip
    print(f"  {'TTA alone':58s} {tta / g:9.2f}")
    print(
        f"  mutual scoring adds 2·L²·C = {ref / g:.3f} GFLOP per image and reference "
        f"(L = {cost['tokens']}): N images with 'all' references add "
        f"{ref / g:.3f}·(N−1) GFLOP per image, e.g. N = 100: {99 * ref / g:.1f}"
    )


if __name__ == "__main__":
    sys.exit(main())
