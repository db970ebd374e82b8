"""Films unlike the training films: flagged against the embedded encoder's reference of phantom
films, saved without pickle, refused when unreadable, ignored when made by another encoder, and
carried into the rows and the page of write_reports."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib.cbook
import pytest
import torch
from PIL import ImageOps

from conftest import open_gates, xray_like
from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor
from flamingo_lib.data.errors import load_image
from flamingo_lib.data.phantom.dataset import PhantomCXR
from flamingo_lib.inference.film_reference import (REFERENCE_FILE, FilmReference, build_film_reference,
                                                   film_embeddings, reference_for)
from flamingo_lib.cli.write_reports import main


@pytest.fixture(scope="module")
def phantom_reference():
    """The embedded (phantom-pretrained) vision encoder, and its reference of 300 training films
    set by 100 validation films."""
    config = FlamingoConfig.from_preset("tiny", lm="tiny-random-biogpt")
    model, processor = FlamingoModel(config).eval(), FlamingoProcessor(config)
    splits = {split: PhantomCXR(split=split, image_size=224, max_samples=n)
              for split, n in (("train", 300), ("val", 100), ("test", 100))}
    reference = build_film_reference(model, processor, splits["train"], splits["val"])
    return model, processor, reference, splits["test"]


def _distance(model, processor, reference, image) -> float:
    return float(reference.distances(film_embeddings(model, processor, [image]))[0])


def test_phantom_test_films_pass_and_a_real_radiograph_an_inverted_film_and_a_photograph_are_flagged(
        phantom_reference):
    from pydicom.data import get_testdata_file

    model, processor, reference, test = phantom_reference
    test_films = [image for i in range(len(test)) for image in test[i].images]
    distances = reference.distances(film_embeddings(model, processor, test_films))
    # the threshold is the 99th percentile of validation films: about 1 in 100 of the same source
    assert int((distances > reference.threshold).sum()) <= 2
    real = load_image(Path(get_testdata_file("RG1_UNCR.dcm")), 224)  # a real chest radiograph (DICOM)
    inverted = ImageOps.invert(test_films[0].convert("L"))
    photograph = load_image(Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)), 224)
    for name, image in (("real radiograph", real), ("inverted film", inverted), ("photograph", photograph)):
        assert _distance(model, processor, reference, image) > reference.threshold, name


def test_the_reference_round_trips_without_pickle_and_a_bad_file_is_refused_by_name(phantom_reference, tmp_path):
    model, processor, reference, test = phantom_reference
    path = reference.save(tmp_path)
    assert path.read_bytes()[8:9] == b"{"  # a safetensors header (JSON), not a pickle
    loaded = reference_for(model, processor, tmp_path)
    queries = film_embeddings(model, processor, test[0].images)
    assert torch.equal(loaded.embeddings, reference.embeddings)
    assert torch.allclose(loaded.distances(queries), reference.distances(queries))
    assert loaded.threshold == reference.threshold and loaded.validation_films == 100
    from safetensors.torch import save_file

    save_file({"embeddings": reference.embeddings}, tmp_path / REFERENCE_FILE, metadata={"threshold": "high"})
    with pytest.raises(ValueError, match=f"{REFERENCE_FILE}.*not a readable film reference"):
        FilmReference.load(tmp_path)
    (tmp_path / REFERENCE_FILE).write_bytes(b"\x80\x04K\x01.")  # a pickle
    with pytest.raises(ValueError, match="not a readable film reference"):
        FilmReference.load(tmp_path)
    assert FilmReference.load(tmp_path / "none") is None


def test_a_reference_of_another_encoder_is_not_used(phantom_reference, tmp_path):
    model, processor, reference, _ = phantom_reference
    reference.save(tmp_path)
    other = FlamingoConfig.from_preset("tiny-random")
    with pytest.warns(UserWarning, match="another vision encoder"):
        assert reference_for(FlamingoModel(other), FlamingoProcessor(other), tmp_path) is None
    with pytest.raises(ValueError, match="another vision encoder"):
        reference.distances(torch.ones(1, reference.embeddings.shape[1] + 1))


def test_the_threshold_is_the_percentile_of_validation_distances():
    train = torch.nn.functional.normalize(torch.randn(50, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    validation = torch.nn.functional.normalize(torch.randn(200, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    reference = FilmReference.build(train, validation, percentile=90)
    assert abs(float((reference.distances(validation) > reference.threshold).float().mean()) - 0.10) < 0.01
    assert float(reference.distances(train).max()) < 1e-6  # a training film is its own nearest
    with pytest.raises(ValueError, match="percentile"):
        FilmReference.build(train, validation, percentile=0)
    with pytest.raises(ValueError, match="validation"):
        FilmReference.build(train, validation[:0])


def test_write_reports_flags_the_film_outside_the_reference_in_its_row_and_on_the_page(tmp_path, capsys):
    config = FlamingoConfig.from_preset("tiny-random")
    model, processor = FlamingoModel(config).eval(), FlamingoProcessor(config)
    open_gates(model)
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir, processor=processor)
    films = tmp_path / "films"
    films.mkdir()
    xray_like(1).save(films / "a_known.png"), xray_like(2).save(films / "b_unknown.png")
    args = [str(model_dir), str(films), "--one-per-image", "--out", str(tmp_path / "r.csv"), "--max-new-tokens", "4",
            "--no-progress", "--device", "cpu", "--films-shareable", "--html", str(tmp_path / "page.html")]
    table = main(args)  # no reference: no column, and the command says nothing was checked
    assert "out_of_distribution" not in table and "no film is checked" in capsys.readouterr().out
    assert "No film was checked" in (tmp_path / "page.html").read_text()
    # a reference holding film a only, its threshold halfway to film b
    known, unknown = film_embeddings(model, processor, [load_image(films / "a_known.png"),
                                                        load_image(films / "b_unknown.png")])
    gap = float(1 - known @ unknown)
    FilmReference(known[None], gap / 2, encoder=_identity(model, processor)).save(model_dir)
    table = main(args)
    assert table["out_of_distribution"].tolist() == [False, True]
    assert table["distance_to_training"][0] < gap / 2 < table["distance_to_training"][1]
    assert "1 studies hold a film unlike the training films" in capsys.readouterr().out
    page = (tmp_path / "page.html").read_text()
    assert page.count("Out of distribution:") == 1 and "1 of 2 studies hold a film unlike" in page
    assert table["report"][1]  # the report is kept, only flagged


def _identity(model, processor) -> str:
    from flamingo_lib.inference.film_reference import vision_identity

    with warnings.catch_warnings():
        return vision_identity(model, processor)
