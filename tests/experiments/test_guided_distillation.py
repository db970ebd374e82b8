"""Best-of-N distillation: the guided choice made once and reused, and a fine-tuning that learns the
chosen reports while the heads keep their verdicts."""

from __future__ import annotations

import json

import pytest
import torch

from experiments import guided_distillation
from experiments.guided_distillation import chosen_reports, fine_tune, reference_choice, with_reports


@pytest.fixture()
def token_model():
    from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor
    from flamingo_lib.observations import FINDINGS_OBSERVATIONS

    torch.manual_seed(0)
    config = FlamingoConfig.from_preset("tiny-random", findings_head=list(FINDINGS_OBSERVATIONS), findings_tokens=True,
                                        reading_head=True)
    return FlamingoModel(config).eval(), FlamingoProcessor(config)


SETUP = {"threshold": 0.5, "candidates": 2, "temperature": 0.7, "top_p": 1.0}


def test_studies_get_the_chosen_reports_and_the_originals_keep_theirs():
    from trainers import SAMPLES

    copies = with_reports(SAMPLES[:2], ["First.", "Second."])
    assert [c.report for c in copies] == ["First.", "Second."]
    assert [c.id for c in copies] == [s.id for s in SAMPLES[:2]] and copies[0].images is SAMPLES[0].images
    assert SAMPLES[0].report not in ("First.", "Second.")
    with pytest.raises(ValueError, match="2 studies but 1 reports"):
        with_reports(SAMPLES[:2], ["Only one."])


def test_the_choice_is_made_once_and_never_written_over_by_another(tmp_path, token_model, monkeypatch):
    from trainers import SAMPLES

    model, processor = token_model
    path = tmp_path / "chosen.jsonl"
    first = chosen_reports(model, processor, SAMPLES[:3], SETUP, path, progress=False)
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == SETUP and [json.loads(x)["id"] for x in lines[1:]] == [s.id for s in SAMPLES[:3]]

    def refuse(*args, **kwargs):
        raise AssertionError("sampled again although the choice was on disk")

    from flamingo_lib.inference import guided_decoding

    monkeypatch.setattr(guided_decoding, "sample_candidates", refuse)
    assert chosen_reports(model, processor, SAMPLES[:3], SETUP, path, progress=False) == first
    # another threshold or other studies: another choice, refused rather than written over this one
    with pytest.raises(ValueError, match=r"chosen\.jsonl: holds the guided choice of 3 studies .*'threshold': 0\.3"):
        chosen_reports(model, processor, SAMPLES[:3], SETUP | {"threshold": 0.3}, path, progress=False)
    with pytest.raises(ValueError, match="for 2 studies: give another --out"):
        chosen_reports(model, processor, SAMPLES[:2], SETUP, path, progress=False)
    assert path.read_text().splitlines() == lines


def test_the_reference_rule_picks_the_candidate_agreeing_with_the_reference_and_breaks_ties_by_the_heads():
    from flamingo_lib.inference.guided_decoding import Candidates
    from flamingo_lib.labeling.labeler import label_report

    observations = ("Pleural Effusion", "Cardiomegaly", "Pneumothorax")
    options = ["The heart is normal in size. No effusion.",  # greedy: misses the effusion
               "Small right pleural effusion. Moderate cardiomegaly.",  # adds what the reference lacks
               "Small right pleural effusion.",
               "There is a small right pleural effusion."]  # as right as the one before it
    stated = torch.tensor([[float(label_report(t).get(o) == 1.0) for o in observations] for t in options])
    assert stated[2].tolist() == stated[3].tolist() == [1.0, 0.0, 0.0] and stated[1].tolist() == [1.0, 1.0, 0.0]
    # the heads believe the cardiomegaly: their own rule would take the report stating it
    belief = torch.tensor([[0.9, 0.9, 0.1]])
    candidates = Candidates([options], [stated], belief, observations)
    reference = "There is a small right pleural effusion. The heart size is normal."
    assert reference_choice(candidates, [reference], threshold=0.5) == [options[2]]  # tie: the earlier one
    from flamingo_lib.inference.guided_decoding import choose

    assert choose(candidates, 0.5) == [options[1]]
    # judged by the reference and the heads together, the report stating the cardiomegaly the heads see
    # agrees with each as much as the one without it does (2/3 + 1 against 1 + 2/3): the heads break the tie
    assert reference_choice(candidates, [reference], threshold=0.5, with_heads=True) == [options[1]]
    # a tie broken by the heads: only they tell two reports that both miss the reference's finding apart
    misses = ["No acute findings.", "Moderate cardiomegaly.", "Right pneumothorax."]
    stated = torch.tensor([[float(label_report(t).get(o) == 1.0) for o in observations] for t in misses])
    candidates = Candidates([misses], [stated], torch.tensor([[0.2, 0.1, 0.9]]), observations)
    assert reference_choice(candidates, ["Small left pleural effusion."], threshold=0.5) == ["Right pneumothorax."]


def test_a_round_learns_the_chosen_reports_leaves_the_heads_alone_and_is_read_back(tmp_path, token_model):
    from types import SimpleNamespace

    from flamingo_lib.training.config import TrainConfig
    from flamingo_lib.training.trainer import ReportCollator
    from trainers import SAMPLES

    model, processor = token_model
    chosen = with_reports(SAMPLES, ["Moderate right pneumothorax."] * len(SAMPLES))
    collator = ReportCollator(processor)

    def loss_on(net, samples):
        with torch.no_grad():
            batch = collator(samples)
            batch.pop("ids")
            return float(net.eval()(**batch).loss)

    heads = {k: v.clone() for k, v in model.state_dict().items() if "findings_head" in k}
    assert heads, "the model has a findings head"
    before = loss_on(model, chosen)
    pipeline = SimpleNamespace(settings=SimpleNamespace(train=TrainConfig(warmup_steps=1)), feature_cache=None)
    args = SimpleNamespace(steps=40, batch_size=4, lr=3e-3, seed=0)
    record = {"data": "phantom:templated", "image_size": 160, "max_train_samples": 8, "seed": 0,
              "feature_storage": "float16", "round": 1}
    tuned = fine_tune(model, processor, pipeline, chosen, tmp_path / "round-1", args, record)
    assert loss_on(tuned, chosen) < before - 0.5  # it learned to write the chosen report
    state = {k: v.clone() for k, v in tuned.state_dict().items()}
    assert all(torch.equal(state[k], v) for k, v in heads.items()), "the heads were trained"
    # a finished round is read back from its checkpoint, not trained again over it
    again = fine_tune(model, processor, pipeline, chosen, tmp_path / "round-1", args, record)
    assert all(torch.equal(again.state_dict()[k], v) for k, v in state.items())
    assert json.loads((tmp_path / "round-1" / "summary.json").read_text())["steps"] == 40
    with pytest.raises(ValueError, match="round-1: a round made from .* give another --out"):
        fine_tune(model, processor, pipeline, chosen, tmp_path / "round-1", args, record | {"round": 2})
    # the round records the run's data, so that evaluate_on can score its model as a run's
    from flamingo_lib.pipeline.run_records import model_directory, training_record

    assert training_record(model_directory(tmp_path / "round-1")) == {k: v for k, v in record.items() if k != "round"}


def test_the_probe_names_a_run_without_a_guided_threshold(tmp_path, monkeypatch, capsys):
    class NoSetup:
        model_and_processor = (None, None)

    monkeypatch.setattr("flamingo_lib.pipeline.steps.Pipeline.from_run", lambda *a, **k: NoSetup())
    monkeypatch.setattr("flamingo_lib.pipeline.run_records.model_directory", lambda run: tmp_path)
    with pytest.raises(SystemExit):
        guided_distillation.main([str(tmp_path), "--out", str(tmp_path / "out")])
    assert f"{tmp_path} recorded no findings-guided threshold" in capsys.readouterr().err


def test_a_later_call_keeps_the_rows_an_earlier_call_of_the_same_setup_scored(tmp_path):
    from experiments.guided_distillation import merged_summary

    path = tmp_path / "scores-test.json"
    base = {"run_dir": "runs/a", "setup": SETUP, "choice": "heads", "steps": 750, "lr": 3e-3, "split": "test",
            "studies": 250}
    new = base | {"scores": {"round 1": {"F1": 0.77}, "beam search (4 beams), round 1": {"F1": 0.75}}}
    assert merged_summary(path, new) == new  # nothing written yet
    path.write_text(json.dumps(base | {"scores": {"round 1": {"F1": 0.70}, "guided, round 1": {"F1": 0.82}}}))
    merged = merged_summary(path, new)
    assert merged["scores"] == {"round 1": {"F1": 0.77}, "guided, round 1": {"F1": 0.82},
                                "beam search (4 beams), round 1": {"F1": 0.75}}  # rescored rows are this call's
    for other in ({"choice": "reference"}, {"studies": 100}, {"run_dir": "runs/b"}, {"steps": 500}):
        path.write_text(json.dumps(base | other | {"scores": {"guided, round 1": {"F1": 0.82}}}))
        assert merged_summary(path, new) == new  # another setup's rows do not hold for these rounds
