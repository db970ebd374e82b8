"""MS-CXR (Boecking et al., ECCV 2022; PhysioNet): radiologists' boxes around the finding each phrase names,
on MIMIC-CXR-JPG films, for phrase-grounding evaluation.

The release's ``MS_CXR_Local_Alignment_v1.x.csv`` has one row per (phrase, box)::

    dicom_id, category_name, label_text, path, x, y, w, h, image_width, image_height[, split]

``path`` is the film's path in MIMIC-CXR-JPG (``files/p10/p10000032/s5.../<dicom_id>.jpg``); the box
(``x``, ``y`` its top-left corner, ``w``, ``h``) is in the pixel frame of an ``image_width`` x
``image_height`` image; ``split`` (v1.1.0) is the release's own train/val/test. One sample per film: its
phrases as the report, and per finding a mask of its boxes in the loaded film's frame, so that
:func:`~flamingo_lib.evaluation.grounding.pointing_game` and the box measures run on it as on the
phantom. MS-CXR is derived from MIMIC-CXR: credentialed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flamingo_lib.data.errors import DataError, OnError, PolicyDataset, check_image_file, load_image, path_in_root
from flamingo_lib.data.index_tables import read_table
from flamingo_lib.data.licence import MIMIC_LICENCE, licence_meta
from flamingo_lib.data.sample import CXRSample

COLUMNS: tuple[str, ...] = ("dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h", "image_width",
                            "image_height")
#: MS-CXR's eight categories -> the finding names of the grounding evaluation (its ``FINDING_WORDS``).
FINDING_NAMES = {"Atelectasis": "atelectasis", "Cardiomegaly": "cardiomegaly", "Consolidation": "consolidation",
                 "Edema": "edema", "Lung Opacity": "opacity", "Pleural Effusion": "pleural effusion",
                 "Pneumonia": "pneumonia", "Pneumothorax": "pneumothorax"}
_SPLITS = ("train", "val", "test")


class MSCXRPhrases(PolicyDataset):
    """MS-CXR's phrase-grounding boxes on their MIMIC-CXR-JPG films, one sample per film.

    Args:
        annotation_csv: ``MS_CXR_Local_Alignment_v1.x.csv``.
        image_root: the MIMIC-CXR-JPG folder the rows' ``path`` is relative to (the one holding ``files/``).
        split: keep the films of one of the release's splits (``train``, ``val``, ``test``; needs the
            ``split`` column of v1.1.0); None keeps all.
        image_size: downscale films on load so the longer side is at most this (masks follow).
        on_error: ``"raise"`` or ``"skip"`` a bad row or a missing film.

    Raises:
        DataError: the CSV is missing or lacks a column, always; a bad row or film in raise mode.
        ValueError: an unknown split, or a split asked of a release without the column.
    """

    def __init__(self, annotation_csv: str | Path, image_root: str | Path, split: str | None = None,
                 image_size: int | None = None, on_error: OnError = "raise") -> None:
        super().__init__(f"MSCXRPhrases({split or 'all'})", on_error)
        self.annotation_csv, self.image_root, self.image_size = Path(annotation_csv), Path(image_root), image_size
        table = read_table(self.annotation_csv, COLUMNS, optional=("split",))
        if split is not None:
            if split not in _SPLITS:
                raise ValueError(f"unknown MS-CXR split {split!r}; known: {_SPLITS}")
            if "split" not in table:
                raise ValueError(f"{self.annotation_csv} has no 'split' column (MS-CXR v1.1.0 has one): "
                                 "load all films (split=None)")
            table = table[table["split"].str.strip().str.lower() == split]
        films: dict[str, dict[str, Any]] = {}
        for row_number, row in zip(table.index, table.itertuples(index=False), strict=True):
            where = f"{self.annotation_csv} (row {row_number + 2}, dicom_id {row.dicom_id})"  # +2: header, 1-based
            try:
                box = self._box(row, where)
                film = films.get(row.dicom_id)
                if film is None:
                    path = path_in_root(self.image_root, row.path, where)
                    check_image_file(path)
                    film = films[row.dicom_id] = {"path": path, "size": box.pop("size"), "boxes": []}
                elif box.pop("size") != film["size"]:
                    raise DataError("bad_row", where, "another image size than the film's earlier rows",
                                    expected=film["size"], got=(row.image_width, row.image_height))
                film["boxes"].append(box)
            except DataError as error:
                self.skip_log.handle(error)
        self._films = list(films.items())
        self.skip_log.log_summary()

    @staticmethod
    def _box(row: Any, where: str) -> dict[str, Any]:
        """A row's box, checked: numbers, positive size, inside its image."""
        values = {}
        for column in ("x", "y", "w", "h", "image_width", "image_height"):
            try:
                values[column] = float(getattr(row, column))
            except ValueError as error:
                raise DataError("bad_row", f"{where}, column {column!r}", "not a number", expected="a number",
                                got=getattr(row, column)) from error
        x, y, w, h, width, height = (values[c] for c in ("x", "y", "w", "h", "image_width", "image_height"))
        if not (w > 0 and h > 0 and width > 0 and height > 0 and x >= 0 and y >= 0 and x + w <= width + 1
                and y + h <= height + 1):  # one pixel of slack: boxes drawn to the edge
            raise DataError("bad_row", where, "box outside its image or of no size",
                            expected="0 <= x, x + w <= image_width, w > 0 (likewise y, h)",
                            got={"x": x, "y": y, "w": w, "h": h, "image_width": width, "image_height": height})
        if not str(row.label_text).strip():
            raise DataError("bad_row", f"{where}, column 'label_text'", "empty phrase")
        return {"category": str(row.category_name).strip(), "phrase": str(row.label_text).strip(),
                "x": x, "y": y, "w": w, "h": h, "size": (width, height)}

    def __len__(self) -> int:
        return len(self._films)

    @property
    def reports(self) -> list[str]:
        """Each film's phrases, joined as its report (no film decoded)."""
        return [_report(film["boxes"]) for _, film in self._films]

    @property
    def image_counts(self) -> list[int]:
        return [1] * len(self._films)

    def _load(self, index: int) -> CXRSample:
        dicom_id, film = self._films[index]
        image = load_image(film["path"], self.image_size)
        masks = finding_masks(film["boxes"], film["size"], image.size)
        report = _report(film["boxes"])
        return CXRSample(
            id=dicom_id, images=[image], report=report, sections={"FINDINGS": report},
            labels={box["category"]: 1.0 for box in film["boxes"]}, masks=masks, views=["UNKNOWN"],
            meta={"source": "ms-cxr", **licence_meta(True, None, MIMIC_LICENCE), "paths": [str(film["path"])],
                  "boxes": [dict(box) for box in film["boxes"]], "annotation_csv": str(self.annotation_csv)},
        )


def _report(boxes: Sequence[dict[str, Any]]) -> str:
    """The film's distinct phrases, in order, as sentences."""
    phrases = dict.fromkeys(box["phrase"].rstrip(". ") for box in boxes)
    return " ".join(f"{phrase}." for phrase in phrases)


def finding_masks(boxes: Sequence[dict[str, Any]], frame: tuple[float, float], size: tuple[int, int]
                  ) -> dict[str, np.ndarray]:
    """Per finding (:data:`FINDING_NAMES`), the union of its boxes as an (H, W) bool mask of a film of
    ``size`` (width, height), the boxes scaled from their ``frame`` (image_width, image_height)."""
    width, height = size
    scale_x, scale_y = width / frame[0], height / frame[1]
    masks: dict[str, np.ndarray] = {}
    for box in boxes:
        name = FINDING_NAMES.get(box["category"], box["category"].lower())
        mask = masks.setdefault(name, np.zeros((height, width), bool))
        left, top = int(np.floor(box["x"] * scale_x)), int(np.floor(box["y"] * scale_y))
        right = max(left + 1, int(np.ceil((box["x"] + box["w"]) * scale_x)))
        bottom = max(top + 1, int(np.ceil((box["y"] + box["h"]) * scale_y)))
        mask[top:bottom, left:right] = True
    return masks
