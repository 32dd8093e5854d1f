"""Published numbers from METHOD.md §7 (category means or per-category anchors, in %).

Each row: method, setting class, backbone @ resolution, source marker, metric -> value.
Source markers: (own) the method's paper/repo; (q) quoted by another paper; (3p) a
third-party listing or re-run. Dual-Image (2405.04782) has no public numbers: none here.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Published:
    method: str
    setting: str
    backbone: str
    source: str
    values: dict[str, float] = field(default_factory=dict)


# metric keys follow metrics.NAMES; only what METHOD.md reports
MVTEC_MEANS = (
    Published("WinCLIP", "TF-1IMG", "ViT-B/16+ @240", "q",
              {"image_auroc": 91.8, "pixel_auroc": 85.1, "aupro": 64.6}),
    Published("WinCLIP re-impl.", "TF-1IMG", "ViT-B/16+ @240", "3p",
              {"image_auroc": 90.4, "pixel_auroc": 82.3, "aupro": 61.9}),
    Published("AnoVL/AnoCLIP", "TF-1IMG+TTA", "ViT-B/16+ @240", "3p",
              {"image_auroc": 92.5, "pixel_auroc": 90.6}),
    Published("AnoVL official code re-run", "TF-1IMG+TTA", "ViT-B/16+ @240", "3p",
              {"image_auroc": 92.16, "pixel_auroc": 89.85, "aupro": 77.57}),
    Published("MuSc, AnoVL's backbone", "BATCH", "ViT-B/16+ @240", "own",
              {"image_auroc": 94.77, "pixel_auroc": 96.26, "aupro": 87.70}),
    Published("MuSc", "BATCH", "ViT-L/14-336 @518", "own",
              {"image_auroc": 97.8, "pixel_auroc": 97.3, "aupro": 93.8}),
)  # fmt: skip

VISA_MEANS = (
    Published("WinCLIP", "TF-1IMG", "ViT-B/16+ @240", "q",
              {"image_auroc": 78.1, "pixel_auroc": 79.6, "aupro": 56.8}),
    Published("AnoVL official code re-run", "TF-1IMG+TTA", "ViT-B/16+ @240", "3p",
              {"image_auroc": 78.84, "image_ap": 81.55, "image_f1max": 79.75,
               "pixel_auroc": 87.75, "pixel_ap": 10.04, "pixel_f1max": 14.82, "aupro": 66.93}),
    Published("MuSc, AnoVL's backbone", "BATCH", "ViT-B/16+ @240", "own",
              {"image_auroc": 82.62, "pixel_auroc": 96.11, "aupro": 72.37}),
)  # fmt: skip

# per-category anchors (I-AUROC / P-AUROC / PRO)
CATEGORY_ANCHORS = {
    "screw": (
        Published("WinCLIP re-impl.", "TF-1IMG", "ViT-B/16+ @240", "3p",
                  {"image_auroc": 71.7, "pixel_auroc": 91.1, "aupro": 70.2}),
        Published("MuSc", "BATCH", "ViT-L/14-336 @518", "own",
                  {"image_auroc": 82.17, "pixel_auroc": 98.77, "aupro": 94.40}),
    ),
    "transistor": (
        Published("WinCLIP re-impl.", "TF-1IMG", "ViT-B/16+ @240", "3p",
                  {"image_auroc": 89.1, "pixel_auroc": 83.7, "aupro": 45.5}),
        Published("MuSc", "BATCH", "ViT-L/14-336 @518", "own",
                  {"image_auroc": 99.42, "pixel_auroc": 91.38, "aupro": 77.21}),
    ),
}  # fmt: skip


def means_for(dataset: str) -> tuple[Published, ...]:
    return {"mvtec": MVTEC_MEANS, "visa": VISA_MEANS}.get(dataset, ())
