"""The "Chex" format: a COCO-captions-style JSON any source can be exported to.

Layout written by :func:`write_chex` (file names are relative to the JSON's folder)::

    out_dir/annotations.json
    out_dir/images/000001_<sample id>_0.png
    out_dir/masks/000001_<sample id>_<finding>.png

``annotations.json`` is COCO captions plus optional extras our exporter adds::

    {"images": [{"id": 1, "file_name": "images/000001_x_0.png", "width": .., "height": ..,
                 # extras, all optional when reading foreign files:
                 "file_names": [...], "sample_id": "x", "views": [...], "sections": {...},
                 "labels": {...}, "findings": [...], "mask_files": {...}, "meta": {...}}],
     "annotations": [{"id": 1, "image_id": 1, "caption": "report text"}]}

:class:`ChexDataset` reads it with the ``dataset`` / ``imgs`` / ``anns`` /
``imgToAnns`` indexes pycocotools' ``COCO`` class builds, one sample per image
entry (its first non-empty caption, in file order, is the report).
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from flamingo_lib.io import write_json_atomic
from flamingo_lib.data.errors import DataError, OnError, PolicyDataset, check_image_file, load_image, path_in_root
from flamingo_lib.data.licence import check_licence, licence_meta
from flamingo_lib.data.sample import CHEXPERT_OBSERVATIONS, CXRSample, Finding

logger = logging.getLogger(__name__)

ANNOTATION_FILE = "annotations.json"
_IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG"}


class CredentialedExportError(PermissionError):
    """Raised when a credentialed sample (e.g. MIMIC-CXR) would be exported."""


class ChexDataset(PolicyDataset):
    """A Chex (COCO-captions-style) annotation file as :class:`CXRSample`\\ s.

    Args:
        annotation_json: the ``annotations.json`` file.
        image_root: folder the ``file_name`` values are relative to; defaults to
            the JSON's folder (where :func:`write_chex` puts them).
        on_error: ``"raise"`` or ``"skip"``.
        image_size: downscale images on load so the longer side is at most this.
        validate_images: also open every image header at construction.
        allow_outside_root: accept image paths that are absolute or lead out of the image root
            (refused by default: an annotation file may come from anyone).
        licence: the declared licence of entries whose ``meta`` does not say whether they are
            credentialed ("open" | "credentialed"); such entries are private when it is None
            (:mod:`flamingo_lib.data.licence`). :func:`write_chex` records it for every sample.

    Attributes:
        dataset: the parsed JSON.
        imgs: image id -> image entry. anns: annotation id -> annotation.
        imgToAnns: image id -> its annotations, in file order.
    """

    def __init__(
        self,
        annotation_json: str | Path,
        image_root: str | Path | None = None,
        on_error: OnError = "raise",
        image_size: int | None = None,
        validate_images: bool = False,
        allow_outside_root: bool = False,
        licence: str | None = None,
    ) -> None:
        check_licence(licence)
        super().__init__(f"ChexDataset({Path(annotation_json).name})", on_error)
        self.allow_outside_root, self.licence = allow_outside_root, licence
        self.annotation_json = Path(annotation_json)
        self.image_root = Path(image_root) if image_root is not None else self.annotation_json.parent
        self.image_size = image_size
        self.dataset = self._read_json()
        self._create_index()
        self._image_ids: list[int] = []
        for image_id, entry in self.imgs.items():
            try:
                self._check(image_id, entry, validate_images)
            except DataError as error:
                self.skip_log.handle(error)
                continue
            self._image_ids.append(image_id)
        self.skip_log.log_summary()

    def _read_json(self) -> dict[str, Any]:
        try:
            data = json.loads(self.annotation_json.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DataError("bad_index_file", self.annotation_json, f"cannot read JSON: {error}") from error
        if not (isinstance(data, dict) and isinstance(data.get("images"), list)
                and isinstance(data.get("annotations"), list)):  # fmt: skip
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise DataError("bad_index_file", self.annotation_json, "not a COCO-style caption file",
                            expected="an object with 'images' and 'annotations' lists", got=got)  # fmt: skip
        return data

    def _create_index(self) -> None:
        """Build ``imgs``, ``anns`` and ``imgToAnns``; bad entries go through the policy."""
        self.imgs: dict[int, dict[str, Any]] = {}
        self.anns: dict[int, dict[str, Any]] = {}
        self.imgToAnns: defaultdict[int, list[dict[str, Any]]] = defaultdict(list)  # noqa: N815 - COCO's name
        for position, image in enumerate(self.dataset["images"]):
            where = f"{self.annotation_json} images[{position}]"
            try:
                if not (isinstance(image, dict) and "id" in image and isinstance(image.get("file_name"), str)):
                    raise DataError("bad_entry", where, "image entry needs an 'id' and a 'file_name' string",
                                    expected="{'id', 'file_name', ...}", got=image)  # fmt: skip
                if image.get("id") in self.imgs:
                    raise DataError("duplicate_id", f"{where}.id", "image id used twice", got=image.get("id"))
            except DataError as error:
                self.skip_log.handle(error)
                continue
            self.imgs[image["id"]] = image
        for position, ann in enumerate(self.dataset["annotations"]):
            where = f"{self.annotation_json} annotations[{position}]"
            try:
                if not isinstance(ann, dict) or not isinstance(ann.get("caption"), str):
                    raise DataError("bad_entry", where, "annotation needs a 'caption' string",
                                    expected="{'id', 'image_id', 'caption'}", got=ann)  # fmt: skip
                if ann.get("image_id") not in self.imgs:
                    raise DataError("annotation_without_image", f"{where}.image_id",
                                    "refers to no image entry", got=ann.get("image_id"))  # fmt: skip
            except DataError as error:
                self.skip_log.handle(error)
                continue
            self.anns[ann.get("id", position)] = ann
            self.imgToAnns[ann["image_id"]].append(ann)

    def _files(self, entry: dict[str, Any]) -> list[Path]:
        """The entry's image paths, inside the image root (``file_names``, else ``file_name``)."""
        where = f"{self.annotation_json} image id {entry['id']}"
        names = entry.get("file_names") or [entry["file_name"]]
        if not isinstance(names, list):  # a string would be read letter by letter
            raise DataError("bad_entry", f"{where}.file_names", "must be a list of paths", expected="list", got=names)
        return [path_in_root(self.image_root, name, f"{where}.file_names", allow_outside=self.allow_outside_root)
                for name in names]

    def _masks(self, entry: dict[str, Any]) -> dict[str, Path]:
        where = f"{self.annotation_json} image id {entry['id']}.mask_files"
        masks = entry.get("mask_files") or {}
        if not isinstance(masks, dict):
            raise DataError("bad_entry", where, "must map finding names to paths", expected="dict", got=masks)
        return {name: path_in_root(self.image_root, relative, f"{where}.{name}", allow_outside=self.allow_outside_root)
                for name, relative in masks.items()}

    def _check(self, image_id: int, entry: dict[str, Any], validate_images: bool) -> None:
        where = f"{self.annotation_json} image id {image_id}"
        if not any(ann["caption"].strip() for ann in self.imgToAnns.get(image_id, [])):
            raise DataError("no_caption", where, "image has no non-empty caption")
        meta = entry.get("meta")
        if meta is not None and not isinstance(meta, dict):
            raise DataError("bad_entry", f"{where}.meta", "must be an object", expected="dict", got=meta)
        if not isinstance((meta or {}).get("credentialed", False), bool):  # "false" must not read as shareable
            raise DataError("bad_entry", f"{where}.meta.credentialed", "must be true or false", expected="bool",
                            got=meta["credentialed"])
        for path in [*self._files(entry), *self._masks(entry).values()]:
            check_image_file(path, open_header=validate_images)

    def __len__(self) -> int:
        return len(self._image_ids)

    @property
    def reports(self) -> list[str]:
        """Each sample's report (its first non-empty caption), from the annotation: no image is decoded."""
        return [next(a["caption"] for a in self.imgToAnns[i] if a["caption"].strip()) for i in self._image_ids]

    @property
    def image_counts(self) -> list[int]:
        """How many images each sample holds, from the annotation."""
        return [len(self.imgs[i].get("file_names") or [self.imgs[i]["file_name"]]) for i in self._image_ids]

    def _load(self, index: int) -> CXRSample:
        image_id = self._image_ids[index]
        entry = self.imgs[image_id]
        captions = [ann["caption"] for ann in self.imgToAnns[image_id] if ann["caption"].strip()]
        paths = self._files(entry)
        masks = {name: np.asarray(load_image(path)) > 0 for name, path in self._masks(entry).items()}
        meta = dict(entry.get("meta") or {})
        meta.update(licence_meta(meta.get("credentialed"), self.licence))
        meta.update({"paths": [str(p) for p in paths], "chex_annotation": str(self.annotation_json),
                     "chex_image_id": image_id, "captions": captions})  # fmt: skip
        return CXRSample(
            id=str(entry.get("sample_id", image_id)),
            images=[load_image(path, self.image_size) for path in paths],
            report=captions[0],
            sections=dict(entry.get("sections") or {"FINDINGS": captions[0]}),
            findings=[Finding(**finding) for finding in entry.get("findings") or []],
            labels=dict(entry.get("labels") or {}),
            masks=masks,
            views=list(entry.get("views") or ["UNKNOWN"] * len(paths)),
            meta=meta,
        )

    def label_frame(self) -> pd.DataFrame:
        """Labels of every sample without loading images (NaN = not mentioned)."""
        rows = [[np.nan if (v := (self.imgs[i].get("labels") or {}).get(name)) is None else v
                 for name in CHEXPERT_OBSERVATIONS] for i in self._image_ids]  # fmt: skip
        index = pd.Index([str(self.imgs[i].get("sample_id", i)) for i in self._image_ids], name="id")
        return pd.DataFrame(rows, index=index, columns=list(CHEXPERT_OBSERVATIONS), dtype=float)


# --- export ---------------------------------------------------------------------


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:80] or "x"


def _json_safe(value: Any) -> Any:
    """Meta values as JSON: paths and numpy scalars converted, unknown types as str."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def write_chex(
    samples: Iterable[CXRSample],
    out_dir: str | Path,
    image_format: str = "png",
    allow_credentialed: bool = False,
    overwrite: bool = False,
) -> Path:
    """Export samples from any source to the Chex format.

    Images (and masks, as 0/255 PNGs) are written first; ``annotations.json`` is
    written last and atomically (temporary file + rename), so a reader never sees
    a half-written index. If anything fails, the files this call created are removed.

    Args:
        samples: the samples, e.g. a loader.
        out_dir: the folder to write into (created when missing).
        image_format: ``"png"`` (lossless, round-trips exactly) or ``"jpg"``.
        allow_credentialed: export samples whose ``meta["credentialed"]`` is true.
            Only pass it when the destination stays within what the data use
            agreement allows (e.g. a private copy for a credentialed user).
        overwrite: replace an existing ``annotations.json`` in ``out_dir``.

    Returns:
        The path of ``annotations.json``.

    Raises:
        CredentialedExportError: a credentialed sample without ``allow_credentialed``.
        FileExistsError: ``out_dir`` already holds an export and not ``overwrite``.
        ValueError: unknown ``image_format`` or a sample with no images.
    """
    extension = image_format.lower().lstrip(".")
    if extension not in _IMAGE_FORMATS:
        raise ValueError(f"unknown image_format {image_format!r}; known: {sorted(_IMAGE_FORMATS)}")
    out_dir = Path(out_dir)
    target = out_dir / ANNOTATION_FILE
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    created: list[Path] = []

    def save(image: Image.Image, relative: str, pil_format: str) -> None:
        path = out_dir / relative
        if not path.exists():
            created.append(path)
        image.save(path, format=pil_format)

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    try:
        for image_id, sample in enumerate(samples, start=1):
            if sample.meta.get("credentialed") and not allow_credentialed:
                raise CredentialedExportError(
                    f"sample {sample.id!r} ({sample.meta.get('source', 'unknown source')}) is credentialed data: "
                    "its data use agreement (e.g. PhysioNet's for MIMIC-CXR) forbids sharing it. Nothing was "
                    "exported. Pass allow_credentialed=True only if the output stays with credentialed users."
                )
            if not sample.images:
                raise ValueError(f"sample {sample.id!r} has no images to export")
            stem = f"{image_id:06d}_{_safe_name(sample.id)}"
            file_names = [f"images/{stem}_{k}.{extension}" for k in range(len(sample.images))]
            for image, relative in zip(sample.images, file_names, strict=True):
                save(image, relative, _IMAGE_FORMATS[extension])
            mask_files = {name: f"masks/{stem}_{_safe_name(name)}.png" for name in sample.masks}
            if mask_files:
                (out_dir / "masks").mkdir(exist_ok=True)
            for name, relative in mask_files.items():
                save(Image.fromarray(np.asarray(sample.masks[name], dtype=bool).astype(np.uint8) * 255),
                     relative, "PNG")  # fmt: skip
            width, height = sample.images[0].size
            images.append({
                "id": image_id, "file_name": file_names[0], "width": width, "height": height,
                "file_names": file_names, "sample_id": sample.id, "views": list(sample.views),
                "sections": dict(sample.sections), "labels": _json_safe(sample.labels),
                "findings": [asdict(finding) for finding in sample.findings],
                "mask_files": mask_files,
                # the licence as the source knew it: a sample of unknown origin stays unknown (private)
                "meta": _json_safe(sample.meta),
            })  # fmt: skip
            annotations.append({"id": image_id, "image_id": image_id, "caption": sample.report})
        write_json_atomic(target, {"images": images, "annotations": annotations}, ensure_ascii=False)
    except BaseException:
        for path in created:
            path.unlink(missing_ok=True)
        raise
    logger.info("wrote %d sample(s) to %s", len(images), target)
    return target
