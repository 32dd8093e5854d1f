"""Running an exported scorer (``.onnx`` with onnxruntime, ``.xml`` with OpenVINO) with
the same inputs and results as :meth:`anoclip.Detector.iter_predict`.

    inputs -> load_rgb (as the Detector) -> engine_helper.preprocess `[B, 3, S, S]`
        -> exported graph -> (score `[B]`, map `[B, S, S]`)
        -> engine_helper.postprocess (bilinear to the image's size, clipped) -> Prediction

The file's sidecar (``<stem>.json``, :mod:`anoclip.deploy.convert`) gives S, mean, std and the
object the text embeddings were baked for. An exported file scores in mode "anoclip"
without TTA; its image score is the CLS score (views 1) or the 22-view score (views 22),
as recorded in the sidecar.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from anoclip.clip.prompts import prompt_name
from anoclip.data import standalone as engine_helper
from anoclip.data.images import ImageInput, load_rgb, source_name
from anoclip.data.loading import as_list
from anoclip.decide.calibrate import DEFAULT_CONFIDENCE, DEFAULT_FALSE_REJECT
from anoclip.decide.decisions import check_calibration, normal_items, threshold_from
from anoclip.errors import ImageDecodeError, UsageError
from anoclip.extras import require
from anoclip.records import Failure, Layout, Prediction, Sample, Scored
from anoclip.threshold import Threshold


class EngineRunner:
    """An exported zero-shot scorer's file and runtime: batches of images -> Scored
    (arguments as :class:`Engine`)."""

    def __init__(
        self, path: str | os.PathLike, threads: int | None = None, batch_size: int = 8
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise UsageError(f"engine file not found: {self.path}")
        if self.path.suffix not in (".onnx", ".xml"):
            raise UsageError(f"{self.path}: expected an exported .onnx or .xml file")
        try:
            self.meta = engine_helper.read_meta(self.path)
        except (FileNotFoundError, ValueError) as exc:
            raise UsageError(str(exc)) from None
        module = "onnxruntime" if self.path.suffix == ".onnx" else "openvino"
        require(module, "export", f"running {self.path.name}")
        if batch_size < 1:
            raise UsageError("batch_size must be >= 1")
        self.batch_size = batch_size
        self._run = engine_helper.open_runner(self.path, threads)

    @property
    def object_name(self) -> str:
        return self.meta["object"]

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised images `[B, 3, S, S]` -> (scores `[B]`, maps `[B, S, S]`)."""
        return self._run(images)

    def check_object(self, object_name: str | None) -> None:
        """Raise :class:`UsageError` when `object_name` is not the export's object."""
        if object_name is None:
            return
        ours = self.meta["prompt_name"]
        theirs = prompt_name(object_name, self.meta.get("class_names", "clean"))
        if object_name != self.object_name and theirs != ours:
            raise UsageError(
                f"{self.path.name} was exported for object {self.object_name!r}, not "
                f"{object_name!r}; export one file per object"
            )

    def iter_scored(
        self,
        images: ImageInput | Sequence[ImageInput],
        object_name: str | None = None,
        tta: bool | str = False,
        *,
        mode: str = "anoclip",
        refs: int | str | None = None,
        progress: bool = False,
        skip: Iterable[int] = (),
    ) -> Iterator[Scored | Failure]:
        """Like :meth:`Detector.iter_scored`: :class:`Scored` with maps at model resolution
        `[S, S]` (its sample carries no pixels) or :class:`Failure`, in order."""
        _check_single_image(tta, mode, refs)
        self.check_object(object_name)
        size = self.image_size
        for item in self._stream(images, skip, progress, None, full_size=False):
            if isinstance(item, Failure):
                yield item
                continue
            sample = Sample(0, item.source, torch.empty(0), Layout((size, size), size),
                            item.image_size or (size, size))  # fmt: skip
            yield Scored(sample, item.score, torch.from_numpy(item.anomaly_map), item.mode)

    def _stream(
        self,
        images: ImageInput | Sequence[ImageInput],
        skip: Iterable[int],
        progress: bool,
        max_map_side: int | None,
        full_size: bool,
    ) -> Iterator[Prediction | Failure]:
        """Batches of the inputs not in `skip`, in order; maps at the image's size (capped)
        when `full_size`, else at model resolution `[S, S]`."""
        items = as_list(images)
        skipped = set(skip)
        todo = [i for i in range(len(items)) if i not in skipped]
        with tqdm(total=len(todo), disable=not progress, unit="img", desc=self.object_name) as bar:
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start : start + self.batch_size]
                yield from self._score_batch([(i, items[i]) for i in chunk], max_map_side,
                                             full_size)  # fmt: skip
                bar.update(len(chunk))

    def _score_batch(
        self,
        batch: Sequence[tuple[int, ImageInput]],
        max_map_side: int | None,
        full_size: bool = True,
    ) -> Iterator[Prediction | Failure]:
        """Decode, run and resize one batch; failures keep their place."""
        decoded: list[tuple[str, Image.Image | Failure]] = []
        for index, item in batch:
            source = source_name(item, index)
            try:
                decoded.append((source, load_rgb(item)))
            except ImageDecodeError as exc:
                decoded.append((source, Failure(source, str(exc))))
        good = [(src, img) for src, img in decoded if not isinstance(img, Failure)]
        results: list[Prediction] = []
        if good:
            meta, size = self.meta, self.image_size
            x = np.stack([engine_helper.preprocess(img, size, meta["mean"], meta["std"])
                          for _, img in good])  # fmt: skip
            scores, maps = self.run(x)
            for (source, img), score, m in zip(good, scores, maps):
                shape = (img.height, img.width)
                if full_size:
                    m = engine_helper.postprocess(m, engine_helper.capped_size(shape, max_map_side))
                results.append(Prediction(source, float(score), m, "anoclip", shape))
        done = iter(results)
        for _source, img in decoded:
            yield img if isinstance(img, Failure) else next(done)


class Engine(EngineRunner):
    """An exported zero-shot scorer, ready to score images of its object, with the same
    keyword interface as :class:`~anoclip.detector.Detector` (predictions, decisions).

    Args:
        path: the exported ``.onnx`` or ``.xml`` file (its ``.json`` sidecar beside it).
        threads: CPU threads of the runtime (None: the runtime's default).
        batch_size: images per run of the graph.
    """

    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        object_name: str | None = None,
        tta: bool | str = False,
        **options: object,
    ) -> list[Prediction]:
        """Score `images`, like :meth:`Detector.predict` (raises :class:`ImageDecodeError`
        naming the first input that cannot be decoded)."""
        out = []
        for item in self.iter_predict(images, object_name, tta, **options):
            if isinstance(item, Failure):
                raise ImageDecodeError(f"{item.source}: {item.reason}")
            out.append(item)
        return out

    def iter_predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        object_name: str | None = None,
        tta: bool | str = False,
        *,
        mode: str = "anoclip",
        refs: int | str | None = None,
        max_map_side: int | None = None,
        threshold: Threshold | float | None = None,
        progress: bool = False,
        skip: Iterable[int] = (),
        bank: object = None,
    ) -> Iterator[Prediction | Failure]:
        """Like :meth:`Detector.iter_predict`: a :class:`Prediction` (map at the image's
        size, longest side capped at `max_map_side`; decided when a `threshold` is given)
        or :class:`Failure` per input, in order; indices in `skip` are not processed.
        `tta` must be off, `mode` "anoclip", `refs` and `bank` None: an exported file has
        neither TTA nor a visual branch."""
        _check_single_image(tta, mode, refs, bank)
        self.check_object(object_name)
        for item in self._stream(images, skip, progress, max_map_side, full_size=True):
            if isinstance(item, Prediction) and threshold is not None:
                item = item.decided(threshold)
            yield item

    def fingerprint(
        self,
        object_name: str | None = None,
        tta: bool | str = False,
        mode: str = "anoclip",
        refs: int | str | None = None,
    ) -> dict[str, Any]:
        """What determines the file's results (:meth:`Detector.fingerprint`'s form, from the
        sidecar): equal to ``Detector(...).fingerprint(object, tta=False)`` of a Detector
        with the exported settings and the file's image score."""
        _check_single_image(tta, mode, refs)
        self.check_object(object_name)
        return dict(self.meta["fingerprint"])

    def calibrate(
        self,
        normals: ImageInput | Sequence[ImageInput],
        object_name: str | None = None,
        false_reject: float = DEFAULT_FALSE_REJECT,
        tta: bool | str = False,
        *,
        mode: str = "anoclip",
        refs: int | str | None = None,
        confidence: float = DEFAULT_CONFIDENCE,
        pixel_quantile: float = 1.0,
        settings_id: Mapping[str, Any] | None = None,
        progress: bool = False,
        bank: object = None,
        normals_are_bank: bool = False,
    ) -> Threshold:
        """Decision thresholds from known-good images, as :meth:`Detector.calibrate` (the
        same signature, estimators and maps at model resolution) on this file's scores. An
        exported file has no visual branch: `bank` must be None, `normals_are_bank` False."""
        _check_single_image(tta, mode, refs, bank, normals_are_bank)
        items = normal_items(normals)
        check_calibration(len(items), false_reject, confidence)
        ident = settings_id or self.fingerprint(object_name, tta, mode, refs)
        stream = self.iter_scored(items, object_name, tta, mode=mode, refs=refs,
                                  progress=progress)  # fmt: skip
        return threshold_from(
            stream, false_reject=false_reject, confidence=confidence,
            pixel_quantile=pixel_quantile, leave_one_out=False, settings=ident,
        )  # fmt: skip


def _check_single_image(
    tta: bool | str,
    mode: str,
    refs: int | str | None,
    bank: object = None,
    normals_are_bank: bool = False,
) -> None:
    """An exported file scores each image alone, without TTA or a bank of normal patches."""
    if bank is not None or normals_are_bank:
        raise UsageError("an exported engine has no visual branch: pass no bank")
    if tta not in (False, None, "none"):
        raise UsageError("an exported engine scores without TTA; pass tta=False (--no-tta)")
    if mode != "anoclip" or refs not in (None, 0):
        raise UsageError(f"an exported engine scores in mode 'anoclip' only, not {mode!r}")
