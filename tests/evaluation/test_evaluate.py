"""Metrics and the evaluation run: known values, the R2Gen conventions, baselines, output files."""

from __future__ import annotations

import json
from collections import Counter
import math
import shutil
import subprocess
import sys

import pytest
import torch

from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor
from flamingo_lib.data import CXRSample
from toy_data import TOY_STUDIES, toy_radiograph
from flamingo_lib.evaluation.evaluate import (evaluate, generate_reports, most_frequent_report, nearest_neighbour_reports,
                                              nearest_neighbours)
from flamingo_lib.evaluation.metrics import NLG_METRICS, clinical_efficacy, most_common_observations, nlg_metrics, normalise_report


def test_identical_reports_score_perfectly_and_unrelated_ones_do_not():
    refs = ["Heart size is normal. No pleural effusion.", "Small left pleural effusion with atelectasis."]
    perfect = nlg_metrics(refs, refs)
    assert tuple(perfect) == NLG_METRICS  # the column names the reference-ceiling row leaves empty
    assert perfect["BLEU_1"] == pytest.approx(1.0) and perfect["BLEU_4"] == pytest.approx(1.0)
    assert perfect["ROUGE_L"] == pytest.approx(1.0)
    poor = nlg_metrics(refs, ["Degenerative changes of the spine.", "Sternotomy wires."])
    assert poor["BLEU_1"] < 0.3 and poor["ROUGE_L"] < 0.3 and poor["CIDEr"] < perfect["CIDEr"]
    if perfect["METEOR"] is not None:  # Java present
        assert perfect["METEOR"] > 0.9 > poor["METEOR"]


@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs Java")
def test_meteor_leaves_no_unclosed_pipes_at_exit():
    script = ("from flamingo_lib.evaluation.metrics import meteor\n"
              "assert meteor({0: ['the heart is normal']}, {0: ['the heart is normal']}) > 0.9\n")
    run = subprocess.run([sys.executable, "-X", "dev", "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "ResourceWarning" not in run.stderr, run.stderr


def test_normalisation_splits_punctuation_and_lowercases():
    assert normalise_report("Heart:  NORMAL.<EOC>") == "heart : normal ."


def test_empty_hypothesis_scores_zero_not_a_crash():
    assert nlg_metrics(["heart is normal ."], [""])["BLEU_1"] < 0.01


def test_clinical_efficacy_counts_only_positive_as_positive():
    refs = [{"Cardiomegaly": 1.0, "Edema": 1.0}, {"Cardiomegaly": -1.0}, {"Edema": 0.0}]
    hyps = [{"Cardiomegaly": 1.0}, {"Cardiomegaly": 1.0}, {"Edema": 1.0}]
    ce = clinical_efficacy(refs, hyps, ["Cardiomegaly", "Edema"])
    # Cardiomegaly: tp 1, fp 1 (uncertain reference is not positive); Edema: tp 0, fp 1, fn 1
    assert ce["micro_precision"] == pytest.approx(1 / 3) and ce["micro_recall"] == pytest.approx(1 / 2)
    assert ce["micro_f1"] == pytest.approx(0.4)
    assert ce["f1/Cardiomegaly"] == pytest.approx(2 / 3) and ce["f1/Edema"] == 0.0
    assert ce["macro_f1"] == pytest.approx(1 / 3)


def test_most_common_observations_ranks_by_positive_count():
    labels = [{"Edema": 1.0, "No Finding": 1.0}, {"Edema": 1.0, "Fracture": 1.0}, {"Fracture": -1.0}]
    assert most_common_observations(labels, k=2) == ["Edema", "Fracture"]


def test_retrieval_baselines():
    assert most_frequent_report(["a", "b", "a "]) == "a"
    train = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    assert nearest_neighbour_reports(train, ["x", "y"], torch.tensor([[0.1, 0.9]])) == ["y"]


@pytest.mark.parametrize("chunk", [1, 3, 7, 8192])
def test_chunked_nearest_neighbours_pick_what_the_whole_similarity_matrix_picks_ties_included(chunk):
    generator = torch.Generator().manual_seed(0)
    train = torch.nn.functional.normalize(torch.randn(50, 16, generator=generator), dim=-1)
    train = torch.cat([train, train[:10]])  # exact ties: the first copy wins, as argmax's does
    queries = torch.cat([torch.nn.functional.normalize(torch.randn(20, 16, generator=generator), dim=-1), train[:10]])
    expected = (queries @ train.T).argmax(-1)
    assert torch.equal(nearest_neighbours(train, queries, chunk=chunk), expected)
    assert nearest_neighbours(train[:0], queries[:0]).tolist() == []


SAMPLES = [CXRSample(id=f"s{i}", images=[toy_radiograph(kind, 160)], report=report)
           for i, (kind, report) in enumerate(TOY_STUDIES)]


class IndexedStudies:
    """A dataset with an index (its reports) that counts the studies it loads."""

    def __init__(self, samples):
        self.samples, self.loads = samples, Counter()

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        self.loads[index] += 1
        return self.samples[index]

    @property
    def reports(self):
        return [s.report for s in self.samples]


def test_evaluation_loads_each_training_study_once_for_its_film_and_reads_reports_from_the_index():
    config = FlamingoConfig.from_preset("tiny-random")
    model, processor = FlamingoModel(config), FlamingoProcessor(config)
    train = IndexedStudies(SAMPLES)
    table = evaluate(model, processor, train, SAMPLES[:2], max_new_tokens=2, progress=False, n_resamples=0,
                     n_permutations=0)
    assert train.loads == Counter(range(len(SAMPLES)))  # the nearest-neighbour descriptor's pass only
    assert table.loc["nearest neighbour", "BLEU_4"] == pytest.approx(1.0)


def test_evaluation_writes_every_system_and_the_protocol(tmp_path):
    config = FlamingoConfig.from_preset("tiny-random")
    model, processor = FlamingoModel(config), FlamingoProcessor(config)
    table = evaluate(model, processor, SAMPLES, SAMPLES[:2], out_dir=tmp_path, max_new_tokens=5, progress=False)
    assert list(table.index) == ["flamingo", "most frequent report", "nearest neighbour", "LM without image"]
    # retrieval from the training set that contains the test studies finds them exactly
    assert table.loc["nearest neighbour", "BLEU_4"] == pytest.approx(1.0)
    assert "CE micro-F1 (14, vs reference)" in table.columns
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["metrics"]) == set(table.index)
    lines = (tmp_path / "generations.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["reference"] == SAMPLES[0].report
    assert "positive = 1.0" in (tmp_path / "PROTOCOL.md").read_text()
    # another decoding's reports are scored as a system of their own, with the protocol's note
    table = evaluate(model, processor, SAMPLES, SAMPLES[:2], out_dir=tmp_path, max_new_tokens=5, progress=False,
                     extra_systems={"flamingo, other": [s.report for s in SAMPLES[:2]]}, protocol_notes="NOTE")
    assert table.loc["flamingo, other", "BLEU_4"] == pytest.approx(1.0)
    assert (tmp_path / "PROTOCOL.md").read_text().rstrip().endswith("NOTE")
    assert json.loads((tmp_path / "generations.jsonl").read_text().splitlines()[1])["flamingo, other"] == SAMPLES[1].report
    with pytest.raises(ValueError, match="extra system 'short': 1 reports for 2 test samples"):
        evaluate(model, processor, SAMPLES, SAMPLES[:2], max_new_tokens=2, progress=False,
                 extra_systems={"short": ["x"]})


def test_radeval_metrics_join_the_table_and_one_that_cannot_run_is_listed_not_faked(tmp_path, monkeypatch):
    pytest.importorskip("radeval")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: CheXbert's weights are absent
    config = FlamingoConfig.from_preset("tiny-random")
    model, processor = FlamingoModel(config), FlamingoProcessor(config)
    with pytest.raises(ValueError, match="unknown metric"):  # before any generation
        evaluate(model, processor, SAMPLES, SAMPLES[:2], metrics=["bleu", "bleu4"], progress=False)
    with pytest.warns(UserWarning, match="not computed: weights for f1chexbert"):
        table = evaluate(model, processor, SAMPLES, SAMPLES[:2], out_dir=tmp_path, max_new_tokens=5,
                         progress=False, metrics=["rouge", "f1chexbert"])
    assert table.loc["nearest neighbour", "RadEval rougeL"] == pytest.approx(1.0)  # it retrieves the studies
    assert table.loc["flamingo", "RadEval rougeL"] < 1 and not any("chexbert" in c for c in table.columns)
    assert set(table.attrs["not_computed"]) == {"f1chexbert"}
    assert set(json.loads((tmp_path / "results.json").read_text())["not_computed"]) == {"f1chexbert"}
    assert "not computed: f1chexbert: weights for f1chexbert" in (tmp_path / "PROTOCOL.md").read_text()


def test_no_image_baseline_ignores_the_image():
    config = FlamingoConfig.from_preset("tiny-random")
    model, processor = FlamingoModel(config), FlamingoProcessor(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gate"):
                p.fill_(1.0)
    a = generate_reports(model, processor, SAMPLES[:1], max_new_tokens=4, with_images=False, progress=False)
    b = generate_reports(model, processor, SAMPLES[1:2], max_new_tokens=4, with_images=False, progress=False)
    assert a == b


def test_rendered_findings_score_gives_an_always_normal_system_nothing():
    """Over the 14 observations "No Finding" rewards a normal-only system; over the findings the
    phantom draws it earns zero, while a system that names the finding scores."""
    from flamingo_lib.data.phantom.text import RENDERED_OBSERVATIONS
    from flamingo_lib.evaluation.evaluate import score
    from flamingo_lib.labeling.labeler import label_report

    assert "No Finding" not in RENDERED_OBSERVATIONS and "Pneumothorax" in RENDERED_OBSERVATIONS
    normal = "Heart size is normal. The lungs are clear. No pleural effusion or pneumothorax."
    effusion = "Heart size is normal. Small right pleural effusion. No pneumothorax."
    references = [normal, normal, effusion]
    truth = [label_report(r) for r in references]
    always_normal = score(references, [normal] * 3, label_report, truth, ["Pleural Effusion"], RENDERED_OBSERVATIONS)
    assert always_normal["CE micro-F1 (14, vs image truth)"] > 0.5
    assert always_normal["CE micro-F1 (rendered findings, vs image truth)"] == 0.0
    right = score(references, references, label_report, truth, ["Pleural Effusion"], RENDERED_OBSERVATIONS)
    assert right["CE micro-F1 (rendered findings, vs image truth)"] == pytest.approx(1.0)
    assert right["CE micro-F1 (rendered findings, vs reference)"] == pytest.approx(1.0)


def test_no_image_baseline_writes_in_the_lm_vocabulary_even_when_eoc_dominates():
    """After training <EOC> may be the likeliest token after a prompt with no image; the baseline
    suppresses the new rows so the frozen LM writes its own continuation instead of nothing."""
    config = FlamingoConfig.from_preset("tiny-random")
    model, processor = FlamingoModel(config), FlamingoProcessor(config)
    head = model.flamingo.lm.get_output_embeddings()
    letter = processor.tokenizer.convert_tokens_to_ids("a")
    original = head.forward

    def eoc_then_letter(hidden):
        logits = original(hidden).clone()
        logits[..., config.eoc_token_id] += 1e4
        logits[..., letter] += 1e3
        return logits

    head.forward = eoc_then_letter
    text = generate_reports(model, processor, SAMPLES[:1], max_new_tokens=3, with_images=False, progress=False)
    assert text == ["aaa"]


def test_reference_ceiling_scores_the_reference_text_against_the_image_truth():
    """A hedged reference ("likely atelectasis") is read as uncertain, so even the reference text
    misses a finding the image shows: the ceiling row says so; its report-vs-report columns are
    empty rather than a trivial 1.0."""
    from flamingo_lib.data.phantom.text import RENDERED_OBSERVATIONS
    from flamingo_lib.evaluation.evaluate import reference_ceiling
    from flamingo_lib.labeling.labeler import label_report

    references = ["Heart size is normal. Small right pleural effusion.",
                  "Streaky left base opacity, likely atelectasis."]
    truth = [{"Pleural Effusion": 1.0}, {"Atelectasis": 1.0}]
    row = reference_ceiling(references, label_report, truth, ["Pleural Effusion"], RENDERED_OBSERVATIONS)
    # effusion: tp; atelectasis read as uncertain: fn; "opacity" read as Lung Opacity: fp
    assert row["CE micro-F1 (rendered findings, vs image truth)"] == pytest.approx(0.5)
    assert math.isnan(row["BLEU_4"]) and math.isnan(row["CE micro-F1 (14, vs reference)"])
    from flamingo_lib.evaluation.evaluate import score

    system_row = score(references, references, label_report, truth, ["Pleural Effusion"], RENDERED_OBSERVATIONS)
    assert list(row) == list(system_row)  # the same columns as every system's row, in the same order


def test_evaluation_on_image_truth_adds_the_reference_ceiling_row(tmp_path):
    config = FlamingoConfig.from_preset("tiny-random")
    model, processor = FlamingoModel(config), FlamingoProcessor(config)
    samples = [CXRSample(id=s.id, images=s.images, report=s.report, labels={"Pleural Effusion": 1.0})
               for s in SAMPLES[:2]]
    table = evaluate(model, processor, SAMPLES, samples, max_new_tokens=3, labels_are_image_truth=True,
                     progress=False)
    assert table.index[-1] == "reference report (ceiling)"
    ceiling = table.loc["reference report (ceiling)"]
    assert math.isnan(ceiling["BLEU_4"])
    assert not math.isnan(ceiling["CE micro-F1 (rendered findings, vs image truth)"])
