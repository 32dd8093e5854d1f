"""Measure the float32 rounding spread of the golden TTA maps, per ATen CPU capability.

    .venv/bin/python -m tests.integration.tta_spread          # all three capabilities

Prints, per capability (ATEN_CPU_CAPABILITY = default, avx2, avx512; read when torch is
imported, hence one process each) and adapter, the largest per-image centred error
‖a − b‖ / ‖b − mean(b)‖ of:

    f32-vs-f64     our float32 pipeline (what test_golden.py::test_maps_after_tta runs)
                   against our float64 TTA on the golden's tokens and text features
    golden-vs-f64  the golden maps against the same float64 maps (CPU-independent)
    f32-vs-golden  what test_maps_after_tta asserts

The tolerances in test_golden.py and test_tta_float64.py are derived from these numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

CAPABILITIES = ("default", "avx2", "avx512")


def measure() -> dict:
    import numpy as np
    import torch

    from anoclip import Detector, load_backbone
    from anoclip.records import Layout, Sample
    from anoclip.testing import run_batch

    from ..conftest import GOLDEN, TINY_CONFIG, TINY_SEED0
    from .test_tta_float64 import ADAPTERS, centred, golden_overrides, ours_float64, rows_by_class

    golden = dict(np.load(GOLDEN))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = load_backbone(str(TINY_CONFIG), str(TINY_SEED0), device="cpu")
    x = torch.from_numpy(golden["input"])
    out = {"capability": torch.backends.cpu.get_cpu_capability()}
    for adapter in ADAPTERS:
        det = Detector(
            backbone=backbone, class_names="verbatim", adapter=adapter, image_score="cls"
        )
        f32 = np.zeros_like(golden[f"map_tta_{adapter}"], dtype=np.float64)
        for cls, rows in rows_by_class(golden).items():
            samples = [
                Sample(
                    i, str(golden["paths"][i]), x[i : i + 1], Layout((240, 240), 240), (240, 240)
                )
                for i in rows
            ]
            hook = golden_overrides(golden, adapter, rows)
            res = run_batch(det, samples, det.text_bank(cls), True, hook)
            f32[rows] = np.stack([r.map.numpy() for r in res])
        _, f64 = ours_float64(golden, torch.from_numpy(golden["vv_tokens"]), adapter)
        gold = golden[f"map_tta_{adapter}"].astype(np.float64)
        out[adapter] = {
            "f32-vs-f64": centred(f32, f64).tolist(),
            "golden-vs-f64": centred(gold, f64).tolist(),
            "f32-vs-golden": centred(f32, gold).tolist(),
        }
    return out


def main() -> None:
    if "--one" in sys.argv:
        print(json.dumps(measure()))
        return
    rows = []
    for cap in CAPABILITIES:
        env = {**os.environ, "ATEN_CPU_CAPABILITY": cap}
        cmd = [sys.executable, "-m", "tests.integration.tta_spread", "--one"]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{'capability':<10} {'adapter':<7} {'f32-vs-f64':>11} {'golden-vs-f64':>14} "
          f"{'f32-vs-golden':>14}   (max over 6 images)")  # fmt: skip
    for row in rows:
        for adapter in ("text", "linear"):
            m = {k: max(v) for k, v in row[adapter].items()}
            print(f"{row['capability']:<10} {adapter:<7} {m['f32-vs-f64']:>11.2e} "
                  f"{m['golden-vs-f64']:>14.2e} {m['f32-vs-golden']:>14.2e}")  # fmt: skip
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
