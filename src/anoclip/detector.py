"""The public facade: :class:`Detector` scores images of one object, zero-shot.

    load the model -> Pipeline.iter_scored (load -> one scorer -> score_batches: each image
    alone, or the set together) -> Prediction (map resized to the image `[H, W]`) -> decision
    (with a threshold: "defect" ⟺ score > t, :mod:`anoclip.decide.decisions`)

    Pipeline (the data path) <- KnownGood (calibrate, fingerprint, build_bank, load_bank)
        <- Detector (load the model, predict, iter_predict)

:meth:`Detector.calibrate` scores known-good images exactly as test images will be scored
and returns a :class:`~anoclip.threshold.Threshold`; ``predict(..., threshold=t)`` fills
``Prediction.decision`` / ``ratio``; ``threshold="unsupervised"`` (or :func:`decide_all`)
applies the label-free outlier rule to the predicted set itself.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from anoclip.clip.backbone import Backbone, load_backbone
from anoclip.data.images import ImageInput
from anoclip.data.preprocess import resize_map
from anoclip.data.standalone import capped_size as capped
from anoclip.decide.calibrate import DEFAULT_CONFIDENCE, DEFAULT_FALSE_REJECT
from anoclip.decide.decisions import check_calibration, decide_all, normal_items, threshold_from
from anoclip.errors import AnoclipWarning, ImageDecodeError, UsageError
from anoclip.notes import NEAR_IDENTICAL, UNFAMILIAR, series_message, series_untrusted
from anoclip.pipeline import Pipeline
from anoclip.records import Failure, Prediction
from anoclip.references.bank import NormalBank
from anoclip.references.familiarity import unfamiliar_message
from anoclip.references.patch_scorer import bank_from
from anoclip.settings import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    Mode,
    Runtime,
    Settings,
    apply,
    fingerprint,
    ref_count,
    tta_kind,
)
from anoclip.threshold import Threshold

ThresholdArg = Threshold | float | Literal["unsupervised"] | None
__all__ = ["Detector", "capped", "decide_all"]


def doubt_messages(noted: Mapping[str, int], scored: int, *, banked: bool = False) -> list[str]:
    """One warning line per doubt that concerns the run (`noted`: note -> images with it, of
    `scored`; `banked`: scored with a bank of known-good images): unfamiliar images, and a
    set that near-identical images dominate."""
    out = []
    if noted.get(UNFAMILIAR):
        out.append(unfamiliar_message(noted[UNFAMILIAR], scored, "the bank's known-good images"))
    if series_untrusted(noted.get(NEAR_IDENTICAL, 0), scored):
        out.append(series_message(noted[NEAR_IDENTICAL], scored, banked=banked))
    return out


class KnownGood(Pipeline):
    """The pipeline plus what known-good images give it: decision thresholds calibrated on
    them (with the fingerprint a threshold records) and banks of their patch features."""

    def fingerprint(
        self,
        object_name: str,
        tta: bool | str = True,
        mode: Mode = "anoclip",
        refs: int | str | None = None,
    ) -> dict[str, Any]:
        """What determines this detector's scores for `object_name` (recorded in thresholds):
        settings, model, weights (files by absolute path), seed, object, mode, refs, TTA."""
        return fingerprint(
            self.settings, model=self.model_name, pretrained=self.weights, seed=self.seed,
            object=object_name, mode=mode, refs=refs, tta=tta_kind(tta),
        )  # fmt: skip

    @property
    def model_name(self) -> str | None:
        """The CLIP model's name (None: no CLIP model, visual references alone)."""
        return None if self.backbone is None else self.backbone.name

    @property
    def weights(self) -> str | None:
        """The CLIP weights: an open_clip tag, a checkpoint's absolute path, or "none"."""
        if self.backbone is None:
            return None
        path = Path(self.backbone.pretrained)
        return str(path.resolve()) if path.is_file() else self.backbone.pretrained

    @property
    def random_weights(self) -> bool:
        """Whether random weights shape the outputs (a CLIP model drawn from the seed)."""
        return self.backbone is not None and self.backbone.random_weights

    def calibrate(
        self,
        normals: ImageInput | Sequence[ImageInput],
        object_name: str,
        false_reject: float = DEFAULT_FALSE_REJECT,
        tta: bool | str = True,
        *,
        mode: Mode = "anoclip",
        refs: int | str | None = None,
        confidence: float = DEFAULT_CONFIDENCE,
        pixel_quantile: float = 1.0,
        settings_id: Mapping[str, Any] | None = None,
        progress: bool = False,
        bank: NormalBank | None = None,
        normals_are_bank: bool = False,
    ) -> Threshold:
        """Decision thresholds from known-good images (METHOD.md P8; images or a folder),
        scored exactly as test images will be (settings, seed, TTA, `mode`, `refs`). In a
        set mode they form their own set, each scored against the others (leave-one-out),
        so the threshold does not depend on the test set and can be reused. α =
        `false_reject`, γ = `confidence`; estimators in :mod:`anoclip.decide.decisions`.

        With a `bank` the known-good images must not be bank images (their distance would be
        0), unless `normals_are_bank`: the bank was built from these very images, in this
        order (:meth:`build_bank`), and each is scored against the bank without itself
        (`NormalBank.leave_out`; mode "anoclip" only)."""
        items = normal_items(normals)
        check_calibration(len(items), false_reject, confidence)
        leave_one_out = ref_count(mode, refs) != 0
        ident = settings_id or self.fingerprint(object_name, tta, mode, refs)
        if normals_are_bank:
            if bank is None or leave_one_out or bank.num_images != len(items):
                raise UsageError(
                    "normals_are_bank needs mode='anoclip' and the bank built from the normals"
                )
            leave_one_out = True
            stream = (
                scored
                for i, item in enumerate(items)
                for scored in self.iter_scored([item], object_name, tta, bank=bank.leave_out(i))
            )
        else:
            stream = self.iter_scored(items, object_name, tta, mode=mode, refs=refs,
                                      progress=progress, bank=bank)  # fmt: skip
        return threshold_from(
            stream, false_reject=false_reject, confidence=confidence,
            pixel_quantile=pixel_quantile, leave_one_out=leave_one_out, settings=ident,
        )  # fmt: skip

    def build_bank(
        self, normals: ImageInput | Sequence[ImageInput], object_name: str
    ) -> NormalBank:
        """A bank of the patch features of known-good images (images or a folder; raises
        ImageDecodeError naming an unreadable one)."""
        items = normal_items(normals)
        if not items:
            raise UsageError("a bank needs at least one known-good image")
        return bank_from(self.visual, self.prepared(items, range(len(items))), object_name)

    def load_bank(self, path: str | Path, object_name: str) -> NormalBank:
        """A saved bank, refused (BankError, one line) unless built with these settings."""
        return NormalBank.load(path, expect=self.visual.bank_meta(object_name))


class Detector(KnownGood):
    """Zero-shot anomaly detector (AnoCLIP, METHOD.md §2; Dual-Image modes, §3).

    Args:
        model: open_clip model name or path of an open_clip model-config JSON.
        pretrained: open_clip tag, local checkpoint path, or ``"none"`` (random weights,
            drawn from `seed`).
        device: ``None`` picks CUDA when available, else CPU.
        seed: seeds random weights, TTA and random pairing; equal seeds give equal outputs.
        settings: what is computed (:class:`Settings`); runtime: how (:class:`Runtime`);
            keyword `overrides` replace fields of either (``temperature=0.07, batch_size=4``).
        backbone: an already loaded :class:`Backbone` (then model/pretrained are ignored).

    With ``fusion="visual"`` on a timm ``visual_backbone`` no CLIP model is built (model and
    pretrained are unused): the maps and scores come from the visual references alone.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        pretrained: str | None = DEFAULT_PRETRAINED,
        device: str | torch.device | None = None,
        seed: int = 0,
        settings: Settings | None = None,
        *,
        runtime: Runtime | None = None,
        backbone: Backbone | None = None,
        cache_dir: str | None = None,
        num_workers: int | None = None,
        **overrides: object,
    ) -> None:
        runtime = runtime or Runtime(device=None if device is None else str(device))
        if num_workers is not None:
            overrides["workers"] = num_workers
        settings, runtime = apply(settings or Settings(), runtime, **overrides)
        if backbone is None and settings.needs_clip:
            backbone = load_backbone(model, pretrained, runtime.device, cache_dir, seed=int(seed))
        super().__init__(backbone, settings, runtime, int(seed))

    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        object_name: str,
        tta: bool | str = True,
        *,
        threshold: ThresholdArg = None,
        **options: object,
    ) -> list[Prediction]:
        """Score `images` (paths, PIL images, arrays `[H, W(, C)]`, or a mix); one
        :class:`Prediction` per image, in input order (ImageDecodeError names the first
        undecodable input).

        tta: True (= "noise", AnoCLIP's), False (= "none"), "synth" or "both".
        mode: "anoclip" (each image alone), "dual" (pairs, each the reference of the other)
            or "mutual" (each against `refs` others, "all" by default); the set modes treat
            `images` as one unlabeled set (one image falls back to "anoclip", warned).
        bank: a :class:`~anoclip.references.bank.NormalBank` of known-good images
            (:meth:`build_bank`,
            :meth:`load_bank`): alone in mode "anoclip", combined with the references in
            the set modes (:mod:`anoclip.references.patch_scorer`).
        threshold: a Threshold (:meth:`calibrate`) or float t fills `decision` ("defect" ⟺
            score > t) and `ratio`; "unsupervised": the set's own robust outlier rule.
        """
        live = None if threshold == "unsupervised" else threshold
        out = []
        for item in self.iter_predict(images, object_name, tta, threshold=live, **options):
            if isinstance(item, Failure):
                raise ImageDecodeError(f"{item.source}: {item.reason}")
            out.append(item)
        return decide_all(out, "unsupervised") if threshold == "unsupervised" else out

    def iter_predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        object_name: str,
        tta: bool | str = True,
        *,
        max_map_side: int | None = None,
        threshold: Threshold | float | None = None,
        **options: object,
    ) -> Iterator[Prediction | Failure]:
        """Like :meth:`predict`, streamed (batch by batch alone; after the whole set is
        encoded in a set mode), undecodable inputs as :class:`Failure`. `skip` resumes a
        run; `max_map_side` caps the maps' longest side; a known `threshold` decides each
        image as it is yielded."""
        if isinstance(threshold, str):
            raise UsageError(
                f"iter_predict: threshold {threshold!r} needs the whole set; use predict(..., "
                "threshold='unsupervised') or decide_all(predictions, 'unsupervised')"
            )
        scored, noted = 0, Counter()
        for item in self.iter_scored(images, object_name, tta, **options):
            if isinstance(item, Failure):
                yield item
                continue
            size = capped(item.sample.size, max_map_side)
            full = resize_map(item.map, size).clamp(0.0, 1.0).numpy().astype(np.float32)
            pred = Prediction(item.sample.source, item.score, full, item.mode, item.sample.size,
                              notes=item.notes)  # fmt: skip
            scored += 1
            noted.update(item.notes)
            yield pred if threshold is None else pred.decided(threshold)
        for line in doubt_messages(noted, scored, banked=options.get("bank") is not None):
            warnings.warn(line, AnoclipWarning, stacklevel=2)
