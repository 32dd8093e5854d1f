"""CPU time per image of the zero-shot scorer: PyTorch vs onnxruntime vs OpenVINO.

    python benchmarks/export.py                          # ViT-B-16-plus-240, random weights
    python benchmarks/export.py --models tiny --images 16
    python benchmarks/export.py --views 22 --lowp        # + FP16 / INT8 variants with their Δ

One export process writes the files (ONNX, OpenVINO IR); then each engine runs in its own
process (so its peak RSS is its own) over the same images, one run each:

    model:      the graph alone, batch 1, on the same preprocessed tensors
                (PyTorch: anoclip.deploy.convert.ZeroShotScorer under inference_mode — the module
                that was exported; onnxruntime / OpenVINO: the exported file)
    end-to-end: file -> score + map at the image's size, batch 1
                (PyTorch: Detector(image_score=...).predict(tta=False); others: Engine)

Times are medians over the images after 2 warm-up runs, wall clock and process CPU time;
ratios are PyTorch's median over the engine's. All engines use --threads threads. Text
embeddings (one-off per object) and model loading are excluded and reported apart. Max |Δ|
is each engine's outputs against PyTorch's (score, map at model resolution). --lowp adds
OpenVINO with FP16-compressed weights and onnxruntime dynamic INT8 (MatMul weights),
with their Δ next to them; with random weights Δ is the only accuracy measure that means
anything.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MODELS = {"tiny": str(SHARED / "models" / "tiny-clip-12l.json"), "vitb16plus": "ViT-B-16-plus-240"}
IMAGES = SHARED / "data" / "mvtec_ad" / "screw" / "test"
OBJECT = "screw"


def image_paths(count: int) -> list[str]:
    """`count` screw test images spread over all defect types (sorted, evenly strided)."""
    paths = sorted(str(p) for p in IMAGES.glob("*/*.png"))
    step = max(1, len(paths) // count)
    return paths[::step][:count]


def detector(model_key: str, views: int, threads: int):
    import torch

    from anoclip import Detector

    torch.set_num_threads(threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Detector(MODELS[model_key], "none", device="cpu", text_tokens="trimmed",
                        image_score="cls" if views == 1 else "cls_aug22")  # fmt: skip


# ----------------------------------------------------------------------------- workers


def do_export(model_key: str, views: int, threads: int, out: str, lowp: bool) -> dict:
    from anoclip.deploy.convert import export_model, openvino_from_onnx

    det = detector(model_key, views, threads)
    det.text_bank(OBJECT)
    start = time.perf_counter()
    res = export_model(det, OBJECT, Path(out) / "scorer.onnx", views=views, check=False)
    onnx_s = time.perf_counter() - start
    start = time.perf_counter()
    openvino_from_onnx(res.model, Path(out) / "scorer.xml", check=False)
    ov_s = time.perf_counter() - start
    info = {"export_onnx_s": onnx_s, "convert_openvino_s": ov_s}
    if lowp:
        import openvino as ov
        from onnxruntime.quantization import QuantType, quantize_dynamic

        ov.save_model(ov.convert_model(str(res.model)), str(Path(out) / "scorer-fp16.xml"),
                      compress_to_fp16=True)  # fmt: skip
        quantize_dynamic(str(res.model), str(Path(out) / "scorer-int8.onnx"),
                         weight_type=QuantType.QInt8)  # fmt: skip
    return info


def _timed(fn, items: list) -> tuple[list, list[float], list[float]]:
    """Run `fn` on each item after 2 warm-ups: (outputs, wall seconds, CPU seconds)."""
    for item in items[:2]:
        fn(item)
    outs, wall, cpu = [], [], []
    for item in items:
        w, c = time.perf_counter(), time.process_time()
        outs.append(fn(item))
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return outs, wall, cpu


def run_engine(
    engine: str, model_key: str, views: int, threads: int, out: str, paths: list[str]
) -> dict:
    """One engine over `paths`: model-only and end-to-end times, outputs for Δ.

    onnxruntime / OpenVINO run through anoclip.data.standalone alone (numpy + Pillow + the
    runtime, no torch import), as a deployment would.
    """
    from anoclip.data import standalone as h  # imports neither torch nor the model stack

    load = os.getloadavg()[0]
    start = time.perf_counter()
    meta_file = Path(out) / "scorer.onnx"
    if engine == "pytorch":
        import torch

        from anoclip.deploy.convert import scorer_for

        det = detector(model_key, views, threads)
        det.text_bank(OBJECT)
        module = scorer_for(det, OBJECT, views)

        def model(x):
            with torch.inference_mode():
                s, m = module(torch.from_numpy(x))
            return s.numpy(), m.numpy()

        def e2e(p):
            return det.predict(p, OBJECT, tta=False)[0].score

    else:
        files = {
            "onnxruntime": "scorer.onnx",
            "openvino": "scorer.xml",
            "openvino-fp16": "scorer-fp16.xml",
            "onnxruntime-int8": "scorer-int8.onnx",
        }
        model = h.open_runner(Path(out) / files[engine], threads)
        meta = h.read_meta(meta_file)
        size, mean, std = meta["image_size"], meta["mean"], meta["std"]

        def e2e(p):
            img = h.load_image(p)
            s, m = model(h.preprocess(img, size, mean, std)[None])
            h.postprocess(m[0], (img.height, img.width))
            return float(s[0])

    load_s = time.perf_counter() - start
    meta = h.read_meta(meta_file)
    xs = [
        h.preprocess(h.load_image(p), meta["image_size"], meta["mean"], meta["std"])[None]
        for p in paths
    ]
    outs, wall, cpu = _timed(model, xs)
    e2e_scores, e2e_wall, e2e_cpu = _timed(e2e, paths)
    return {
        "engine": engine,
        "load_s": load_s,
        "model_wall": wall,
        "model_cpu": cpu,
        "e2e_wall": e2e_wall,
        "e2e_cpu": e2e_cpu,
        "scores": [float(o[0][0]) for o in outs],
        "maps": np.stack([o[1][0] for o in outs]),
        "e2e_scores": e2e_scores,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_imported": "torch" in sys.modules,
        "load_avg": (load, os.getloadavg()[0]),
    }


def _child(target, args: tuple, queue) -> None:
    try:
        queue.put(("ok", target(*args)))
    except BaseException as exc:  # noqa: BLE001 - reported by the parent
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def in_process(target, *args):
    """Run `target(*args)` in a fresh (spawned) process and return its result."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(target, args, queue))
    proc.start()
    status, value = queue.get()
    proc.join()
    if status != "ok":
        raise RuntimeError(value)
    return value


# ----------------------------------------------------------------------------- report


def med_ms(xs: list[float]) -> float:
    return 1000 * statistics.median(xs)


def report(model_key: str, views: int, threads: int, results: list[dict], out: Path,
           info: dict) -> str:  # fmt: skip
    ref = next(r for r in results if r["engine"] == "pytorch")
    sizes = {f.name: f.stat().st_size / 2**20 for f in sorted(out.iterdir()) if f.is_file()}
    lines = [
        f"### {MODELS[model_key]} (random weights), views={views}, {threads} threads, "
        f"{len(ref['scores'])} images",
        "",
        "| engine | model ms (wall) | model ms (CPU) | × PyTorch | end-to-end ms | × PyTorch "
        "| peak RSS MB | load s | max Δ score | max Δ map | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        d_score = max(abs(a - b) for a, b in zip(r["scores"], ref["scores"]))
        d_map = float(np.abs(r["maps"] - ref["maps"]).max())
        lines.append(
            f"| {r['engine']} | {med_ms(r['model_wall']):.1f} | {med_ms(r['model_cpu']):.1f} "
            f"| {med_ms(ref['model_wall']) / med_ms(r['model_wall']):.2f} "
            f"| {med_ms(r['e2e_wall']):.1f} "
            f"| {med_ms(ref['e2e_wall']) / med_ms(r['e2e_wall']):.2f} "
            f"| {r['rss_mb']:.0f} | {r['load_s']:.1f} | {d_score:.2g} | {d_map:.2g} "
            f"| {r['load_avg'][0]:.1f}→{r['load_avg'][1]:.1f} |"
        )
    lines += ["", "| file | MiB |", "|---|---|"]
    lines += [f"| {name} | {mb:.1f} |" for name, mb in sizes.items() if not name.endswith(".py")]
    lines += ["", f"export: {info['export_onnx_s']:.0f} s ONNX, "
              f"{info['convert_openvino_s']:.0f} s OpenVINO conversion"]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vitb16plus"], choices=list(MODELS))
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--views", type=int, default=1, choices=(1, 22))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lowp", action="store_true", help="add FP16 / INT8 variants")
    parser.add_argument("--out", default=str(REPO / "runs" / "bench_export"))
    args = parser.parse_args(argv)
    paths = image_paths(args.images)
    engines = ["pytorch", "onnxruntime", "openvino"]
    if args.lowp:
        engines += ["openvino-fp16", "onnxruntime-int8"]
    tables = []
    for key in args.models:
        out = Path(args.out) / f"{key}-v{args.views}"
        out.mkdir(parents=True, exist_ok=True)
        print(f"[{key}] exporting ...", file=sys.stderr)
        info = in_process(do_export, key, args.views, args.threads, str(out), args.lowp)
        results = []
        for engine in engines:
            print(f"[{key}] {engine} ...", file=sys.stderr)
            results.append(
                in_process(run_engine, engine, key, args.views, args.threads, str(out), paths)
            )
        table = report(key, args.views, args.threads, results, out, info)
        (out / "report.md").write_text(table + "\n")
        (out / "times.json").write_text(json.dumps(
            [{k: v for k, v in r.items() if k != "maps"} for r in results], indent=1
        ))  # fmt: skip
        tables.append(table)
        print(table, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
