"""The rule-based CheXpert labeler, its optional CheXbert backend, and its agreement with IU MeSH."""

from __future__ import annotations

import sys
import time
import types

import pytest

from flamingo_lib.data.sample import CHEXPERT_OBSERVATIONS
from flamingo_lib.labeling.labeler import label_report, label_reports
from flamingo_lib.labeling.agreement import (
    MICRO_WITHOUT_NO_FINDING,
    TARGET_MICRO_F1,
    agreement_table,
    iu_agreement,
)


def positives(text: str) -> dict[str, float]:
    """Only the observations the labeler mentions, for compact assertions."""
    return {k: v for k, v in label_report(text).items() if v is not None}


# --- mentions and negation scope --------------------------------------------------------------


def test_labels_are_keyed_by_all_observations_in_order() -> None:
    assert list(label_report("Mild cardiomegaly.")) == list(CHEXPERT_OBSERVATIONS)


def test_one_negation_covers_a_whole_list() -> None:
    labels = label_report("No focal consolidation, pleural effusion, or pneumothorax.")
    assert labels["Consolidation"] == labels["Pleural Effusion"] == labels["Pneumothorax"] == 0.0
    assert labels["No Finding"] == 1.0


def test_negation_is_carried_along_a_long_list() -> None:
    text = "No focal consolidation, suspicious pulmonary opacity, large pleural effusion, or pneumothorax."
    labels = label_report(text)
    assert {labels[o] for o in ("Consolidation", "Lung Opacity", "Pleural Effusion", "Pneumothorax")} == {0.0}


@pytest.mark.parametrize(
    "text",
    [
        "No pleural effusion but there is right lower lobe consolidation.",
        "No pleural effusion. Right lower lobe consolidation.",
        "No pleural effusion; right lower lobe consolidation.",
        "Without pleural effusion, however right lower lobe consolidation is present.",
    ],
)
def test_negation_scope_ends_at_clause_breaks(text: str) -> None:
    labels = label_report(text)
    assert labels["Pleural Effusion"] == 0.0 and labels["Consolidation"] == 1.0


def test_a_new_line_ends_a_sentence() -> None:
    assert label_report("No pneumothorax\nSmall left effusion")["Pleural Effusion"] == 1.0


@pytest.mark.parametrize(
    "text",
    ["There is a nodule <5 mm in the left upper lobe.", "Stable 4 mm nodule.", "Right hilar mass."],
)
def test_nodules_and_masses_are_lung_lesions(text: str) -> None:
    assert label_report(text)["Lung Lesion"] == 1.0


@pytest.mark.parametrize(
    ("text", "observation"),
    [
        ("Pneumothorax is not seen.", "Pneumothorax"),
        ("The effusion has resolved.", "Pleural Effusion"),
        ("The heart is not enlarged.", "Cardiomegaly"),
        ("Negative for pneumothorax.", "Pneumothorax"),
        ("Lungs are free of focal infiltrates.", "Lung Opacity"),
        ("No focal consolidation to suggest pneumonia.", "Pneumonia"),
    ],
)
def test_negations_before_after_and_inside_a_mention(text: str, observation: str) -> None:
    assert label_report(text)[observation] == 0.0


def test_no_change_is_not_a_negation() -> None:
    assert label_report("No change in the small left pleural effusion.")["Pleural Effusion"] == 1.0


# --- uncertainty ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "observation"),
    [
        ("Possible small left effusion.", "Pleural Effusion"),
        ("Opacity which may represent atelectasis.", "Atelectasis"),
        ("Pneumothorax cannot be excluded.", "Pneumothorax"),
        ("Cannot exclude early pneumonia.", "Pneumonia"),
        ("Findings likely represent edema.", "Edema"),
        ("Findings suggest pneumonia.", "Pneumonia"),
        ("Questionable right lower lobe nodule.", "Lung Lesion"),
        ("Atelectasis versus pneumonia.", "Atelectasis"),
    ],
)
def test_hedged_mentions_are_uncertain(text: str, observation: str) -> None:
    assert label_report(text)[observation] == -1.0


def test_versus_hedges_only_its_neighbours() -> None:
    labels = label_report("Right basilar opacity, atelectasis versus pneumonia.")
    assert labels["Lung Opacity"] == 1.0
    assert labels["Atelectasis"] == labels["Pneumonia"] == -1.0


def test_age_indeterminate_fracture_is_a_certain_fracture() -> None:
    assert label_report("Age-indeterminate compression fracture of T8.")["Fracture"] == 1.0


# --- normal statements and aggregation --------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["Heart size is normal.", "Normal cardiac silhouette.", "Heart size within normal limits."]
)
def test_normal_heart_statements_negate_cardiomegaly(text: str) -> None:
    assert label_report(text)["Cardiomegaly"] == 0.0


@pytest.mark.parametrize(
    "text", ["The cardiac silhouette is enlarged.", "Cardiomegaly.", "Heart size is mildly enlarged."]
)
def test_enlarged_heart_phrasings_are_cardiomegaly(text: str) -> None:
    assert label_report(text)["Cardiomegaly"] == 1.0


def test_borderline_heart_is_a_degree_and_heart_failure_is_edema_only() -> None:
    assert label_report("Borderline cardiomegaly.")["Cardiomegaly"] == 1.0
    labels = label_report("Congestive heart failure.")
    assert labels["Edema"] == 1.0 and labels["Cardiomegaly"] is None


def test_normal_cardiomediastinal_silhouette_negates_both_heart_observations() -> None:
    labels = label_report("The cardiomediastinal silhouette is within normal limits.")
    assert labels["Cardiomegaly"] == labels["Enlarged Cardiomediastinum"] == 0.0


def test_upper_limits_of_normal_is_not_a_normal_heart() -> None:
    assert label_report("Heart size is upper limits of normal.")["Cardiomegaly"] is None


def test_clear_lungs_negate_opacity() -> None:
    assert label_report("The lungs are clear.")["Lung Opacity"] == 0.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Possible left effusion. Small right pleural effusion.", 1.0),
        ("No effusion on the left. Possible right effusion.", -1.0),
        ("No effusion. Costophrenic angles are sharp.", 0.0),
    ],
)
def test_positive_beats_uncertain_beats_negative(text: str, expected: float) -> None:
    assert label_report(text)["Pleural Effusion"] == expected


def test_look_alike_phrases_are_not_mentions() -> None:
    assert label_report("Small pericardial effusion.")["Pleural Effusion"] is None
    assert label_report("Residuals of prior granulomatous infection.")["Pneumonia"] is None


# --- No Finding, XXXX, bad input --------------------------------------------------------------


def test_no_finding_ignores_support_devices() -> None:
    labels = label_report("Left PICC line in place. No acute disease.")
    assert labels["Support Devices"] == 1.0 and labels["No Finding"] == 1.0


@pytest.mark.parametrize("text", ["Possible pneumonia.", "Mild cardiomegaly.", "Old rib fracture."])
def test_any_positive_or_uncertain_finding_clears_no_finding(text: str) -> None:
    assert label_report(text)["No Finding"] is None


@pytest.mark.parametrize("text", ["", "   ", "XXXX XXXX.", "..."])
def test_text_without_words_is_not_labeled(text: str) -> None:
    assert positives(text) == {}


def test_deidentification_tokens_are_plain_words() -> None:
    assert label_report("There are no XXXX of a pleural effusion.")["Pleural Effusion"] == 0.0
    assert label_report("Left chest XXXX with tip in the SVC.")["Support Devices"] == 1.0


def test_non_text_is_rejected() -> None:
    with pytest.raises(TypeError, match="str"):
        label_report(None)  # type: ignore[arg-type]


# --- label_reports and the CheXbert backend ---------------------------------------------------


def test_rules_backend_labels_each_text_in_order() -> None:
    texts = ["Mild cardiomegaly.", "No pneumothorax."]
    assert label_reports(texts) == [label_report(t) for t in texts]


def test_label_reports_rejects_a_lone_string_and_unknown_backends() -> None:
    with pytest.raises(TypeError, match="single str"):
        label_reports("Mild cardiomegaly.")
    with pytest.raises(ValueError, match="unknown labeler backend"):
        label_reports(["x"], backend="magic")


def test_chexbert_backend_without_the_package_says_what_is_missing(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "f1chexbert", None)  # makes the import fail
    with pytest.raises(RuntimeError, match="f1chexbert package"):
        label_reports(["Mild cardiomegaly."], backend="chexbert")


def test_chexbert_backend_without_local_weights_never_downloads(monkeypatch) -> None:
    fake = types.ModuleType("f1chexbert")
    fake.F1CheXbert = lambda **_: pytest.fail("must not build the model without weights")
    monkeypatch.setitem(sys.modules, "f1chexbert", fake)
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: None)
    with pytest.raises(RuntimeError, match="chexbert.pth"):
        label_reports(["Mild cardiomegaly."], backend="chexbert")


def test_chexbert_backend_maps_its_classes_onto_our_labels(monkeypatch) -> None:
    names = [o for o in CHEXPERT_OBSERVATIONS if o != "No Finding"] + ["No Finding"]

    class FakeModel:
        target_names = names

        def __init__(self, **_: object) -> None:
            pass

        def get_label(self, text: str, mode: str) -> tuple[list, object]:
            assert mode == "classification"
            values = {"Cardiomegaly": 1, "Edema": 0, "Pneumonia": -1}
            return [values.get(n, "") for n in names], None

    fake = types.ModuleType("f1chexbert")
    fake.F1CheXbert = FakeModel
    monkeypatch.setitem(sys.modules, "f1chexbert", fake)
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: "/cache/x")
    (labels,) = label_reports(["anything"], backend="chexbert")
    assert list(labels) == list(CHEXPERT_OBSERVATIONS)
    assert {k: v for k, v in labels.items() if v is not None} == {
        "Cardiomegaly": 1.0,
        "Edema": 0.0,
        "Pneumonia": -1.0,
    }


# --- agreement with MeSH ----------------------------------------------------------------------


def test_agreement_table_counts_and_scores() -> None:
    predicted = [{"Edema": 1.0}, {"Edema": -1.0}, {"Edema": None}, {"Edema": 1.0}]
    reference = [{"Edema": 1.0}, {"Edema": 1.0}, {"Edema": 1.0}, {"Edema": 0.0}]
    strict = agreement_table(predicted, reference, ["Edema"])
    assert tuple(strict.loc["Edema", ["tp", "fp", "fn", "support"]]) == (1, 1, 2, 3)
    assert strict.loc["Edema", "precision"] == pytest.approx(0.5)
    assert strict.loc["Edema", "recall"] == pytest.approx(1 / 3)
    lenient = agreement_table(predicted, reference, ["Edema"], uncertain_is_positive=True)
    assert lenient.loc["micro", "recall"] == pytest.approx(2 / 3)


def test_agreement_table_rejects_misaligned_inputs() -> None:
    with pytest.raises(ValueError, match="2 predictions but 1"):
        agreement_table([{}, {}], [{}])


def test_labeler_agrees_with_iu_mesh_annotation() -> None:
    pytest.importorskip("torchxrayvision")
    table = iu_agreement()
    assert table.loc["micro", "f1"] >= TARGET_MICRO_F1
    # The pooled score must not lean on "No Finding" alone.
    assert table.loc[MICRO_WITHOUT_NO_FINDING, "f1"] >= TARGET_MICRO_F1
    assert table.loc["micro", "support"] > 5000


def test_labeler_is_fast_enough_for_a_corpus() -> None:
    texts = ["The heart is not enlarged. No focal consolidation, effusion, or pneumothorax."] * 2000
    start = time.perf_counter()
    label_reports(texts)
    assert time.perf_counter() - start < 5.0


@pytest.mark.parametrize("text", ["Moderate rounded nodular opacity in the right base.",
                                  "Nodular densities in both upper lobes.",
                                  "Nodular opacification at the left apex."])
def test_a_nodular_opacity_or_density_is_a_lung_lesion_as_chexpert_lists_it(text: str) -> None:
    labels = label_report(text)
    assert labels["Lung Lesion"] == 1.0 and labels["Lung Opacity"] == 1.0


@pytest.mark.parametrize("text", ["Reticulonodular opacities at the bases.", "Nodular contour of the left hilum."])
def test_nodular_alone_describes_a_shape_not_a_lesion(text: str) -> None:
    assert label_report(text)["Lung Lesion"] is None


def test_the_recorded_rules_version_names_todays_rules() -> None:
    # Fails when a rule or phrase list changed: give the rules a new RULES_VERSION and record the
    # new RULES_DIGEST in flamingo_lib/labeling/version.py (runs trained on the old rules retrain).
    from flamingo_lib.labeling import version

    assert version.rules_digest() == version.RULES_DIGEST, (
        f"the labeler's rules changed (digest {version.rules_digest()}, recorded {version.RULES_DIGEST})")
    assert version.rules_version() == version.RULES_VERSION


def test_rules_version_ignores_docstrings_and_imports_but_not_a_rule(monkeypatch) -> None:
    from flamingo_lib.labeling import version

    real_read = version.Path.read_text

    def read(edit):
        monkeypatch.setattr(version.Path, "read_text", lambda self, **kw: edit(real_read(self, **kw)))
        version.rules_digest.cache_clear()
        try:
            return version.rules_version()
        finally:
            monkeypatch.setattr(version.Path, "read_text", real_read)
            version.rules_digest.cache_clear()

    assert read(lambda src: src.replace('"""', '"""Reworded. ', 1)) == version.RULES_VERSION
    assert read(lambda src: "import os.path as moved_elsewhere\n" + src + "\n# a comment\n") == version.RULES_VERSION
    changed = read(lambda src: src.replace('effusions?"', 'effusions"'))
    assert changed != version.RULES_VERSION and len(changed) == 16
    assert version.rules_version() == version.RULES_VERSION