"""MS-CXR's phrase-grounding release read from a tree in its layout: boxes become masks in the loaded
film's frame, bad rows are refused naming the row and column, and the pointing game runs on it."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flamingo_lib.data.datasets.ms_cxr import COLUMNS, MSCXRPhrases
from flamingo_lib.data.errors import DataError

PATH = "files/p10/p10000032/s50414267/{}.jpg"


def write_release(root: Path, rows: list[dict], split_column: bool = True) -> Path:
    """A MIMIC-CXR-JPG folder with 200 x 160 films and an MS-CXR CSV of ``rows``."""
    for row in rows:
        film = root / "jpg" / PATH.format(row["dicom_id"])
        if not film.exists():
            film.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((160, 200), 90, np.uint8)).save(film)
    path = root / "MS_CXR_Local_Alignment_v1.1.0.csv"
    columns = [*COLUMNS, *(["split"] if split_column else [])]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows({c: row.get(c, "") for c in columns} for row in rows)
    return path


def row(dicom_id="d1", category="Pleural Effusion", phrase="Small left pleural effusion", x=20, y=40, w=60, h=30,
        split="test"):
    return {"dicom_id": dicom_id, "category_name": category, "label_text": phrase, "path": PATH.format(dicom_id),
            "x": x, "y": y, "w": w, "h": h, "image_width": 200, "image_height": 160, "split": split}


def test_each_film_holds_its_phrases_and_a_mask_per_finding_in_the_loaded_frame(tmp_path):
    csv_path = write_release(tmp_path, [row(), row(category="Cardiomegaly", phrase="The heart is enlarged", x=100,
                                                   y=60, w=50, h=50), row("d2", split="train")])
    films = MSCXRPhrases(csv_path, tmp_path / "jpg", split="test", image_size=100)  # loaded at half size
    assert len(films) == 1 and films.reports == ["Small left pleural effusion. The heart is enlarged."]
    sample = films[0]
    assert sample.images[0].size == (100, 80) and sample.meta["credentialed"] is True
    effusion = sample.masks["pleural effusion"]
    assert effusion.shape == (80, 100) and effusion.sum() == 30 * 15  # 60 x 30 at half size
    rows, columns = np.flatnonzero(effusion.any(1)), np.flatnonzero(effusion.any(0))
    assert (rows[0], rows[-1], columns[0], columns[-1]) == (20, 34, 10, 39)
    assert set(sample.masks) == {"pleural effusion", "cardiomegaly"} and sample.labels["Cardiomegaly"] == 1.0
    assert sample.meta["boxes"][0]["x"] == 20.0  # the release's own frame, kept
    assert len(MSCXRPhrases(csv_path, tmp_path / "jpg")) == 2


def test_bad_rows_are_refused_naming_row_and_column_and_skipped_on_request(tmp_path):
    csv_path = write_release(tmp_path, [row(), row("d2", x="left"), row("d3", x=180, w=60), row("d4")])
    with pytest.raises(DataError, match=r"row 3, dicom_id d2\), column 'x'.*not a number"):
        MSCXRPhrases(csv_path, tmp_path / "jpg")
    films = MSCXRPhrases(csv_path, tmp_path / "jpg", on_error="skip")
    assert [films[i].id for i in range(len(films))] == ["d1", "d4"]  # d3's box leaves its image
    (tmp_path / "jpg" / PATH.format("d4")).unlink()
    assert len(MSCXRPhrases(csv_path, tmp_path / "jpg", on_error="skip")) == 1
    with pytest.raises(ValueError, match="has no 'split' column"):
        MSCXRPhrases(write_release(tmp_path / "v1.0", [row()], split_column=False), tmp_path / "v1.0" / "jpg",
                     split="test")
    with pytest.raises(DataError, match=r"missing columns \['category_name'"):
        broken = tmp_path / "broken.csv"
        broken.write_text("dicom_id,label_text\nd1,x\n")
        MSCXRPhrases(broken, tmp_path / "jpg")


def test_the_pointing_game_and_box_measures_run_on_ms_cxr_films(tmp_path):
    from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor
    from flamingo_lib.evaluation.grounding import pointing_game

    csv_path = write_release(tmp_path, [row(), row("d2", category="Cardiomegaly", phrase="Cardiomegaly", x=90,
                                                   y=50, w=70, h=60)])
    config = FlamingoConfig.from_preset("tiny-random")
    results = pointing_game(FlamingoModel(config).eval(), FlamingoProcessor(config),
                            MSCXRPhrases(csv_path, tmp_path / "jpg"))
    assert sorted(results["finding"]) == ["cardiomegaly", "pleural effusion"]
    assert results["box_area"].tolist() == pytest.approx([60 * 30 / 32000, 70 * 60 / 32000])
    assert results[["iou", "mass_in_box"]].notna().all().all()
