"""The reward stage: the clinical reward, the self-critical / group policy loss it minimises, and the
supervised trainer's guarantees (checkpoints, bit-identical resume, metrics) kept."""

from __future__ import annotations

import pytest
import torch

from flamingo_lib.training.reward import clinical_reward, rewards
from flamingo_lib.training.reward_trainer import RewardConfig
from trainers import make_reward_trainer


def trainable(trainer):
    return {k: v.clone() for k, v in trainer.unwrapped.state_dict_trainable().items()}


def test_clinical_reward_is_the_f1_of_the_stated_findings_against_the_references():
    effusion, both = {"Pleural Effusion": 1.0}, {"Pleural Effusion": 1.0, "Cardiomegaly": 1.0}
    assert clinical_reward(effusion, effusion) == 1.0
    assert clinical_reward(both, effusion) == pytest.approx(2 / 3)  # one right, one too many
    assert clinical_reward({"Pleural Effusion": -1.0}, effusion) == 0.0  # uncertain is not stated
    assert clinical_reward({"No Finding": 1.0}, {"No Finding": 1.0}) == 1.0
    assert clinical_reward({}, {}) == 1.0  # both state nothing: they agree
    assert clinical_reward({}, effusion) == 0.0
    labeler = {"heart big": {"Cardiomegaly": 1.0}, "clear": {}}.__getitem__
    assert rewards(["heart big", "clear"], ["heart big", "heart big"], labeler).tolist() == [1.0, 0.0]


def _fixed(trainer, texts_by_call):
    """Make the trainer's decoding return the given reports (sampled first, then greedy)."""
    calls = iter(texts_by_call)
    trainer._decode = lambda batch, views, **kw: next(calls)  # noqa: SLF001


@pytest.mark.parametrize("baseline", ["greedy", "group"])
def test_the_policy_loss_is_minus_the_advantage_weighted_log_likelihood_of_the_samples(tmp_path, baseline):
    labeler = lambda text: {"Cardiomegaly": 1.0} if "heart" in text else {}  # noqa: E731
    trainer = make_reward_trainer(tmp_path, labeler=labeler, baseline=baseline)
    collator, processor = trainer.collator, trainer.collator.processor
    samples = trainer.train_set[:2]
    sampled = ["the heart is big", "lungs clear", "lungs clear", "clear"]  # 2 studies x 2 samples
    greedy = ["lungs clear", "the heart is big"]
    _fixed(trainer, [sampled, greedy])
    batch = collator(samples)
    batch.pop("ids")
    references = list(batch["reports"])
    loss, lm_loss, _ = trainer._batch_loss(dict(batch), [0, 1])  # noqa: SLF001

    reward = torch.tensor([[float(("heart" in s) == ("heart" in r)) for s in sampled[2 * i:2 * i + 2]]
                           for i, r in enumerate(references)])
    base = (torch.tensor([float(("heart" in g) == ("heart" in r)) for g, r in zip(greedy, references)])
            if baseline == "greedy" else reward.mean(-1))
    advantage = (reward - base[:, None]).flatten()
    text = processor.text_batch(sampled, [processor.study_prompt(1)] * 4)
    media = batch["pixel_values"].repeat_interleave(2, 0)
    nll = trainer.model(**text, pixel_values=media, loss_reduction="none").loss
    tokens = (text["labels"][:, 1:] != -100).sum(-1)
    supervised = trainer.model(**{k: v for k, v in batch.items() if k != "reports"}).loss
    expected = (advantage * nll * tokens).sum() / tokens.sum() + supervised
    assert torch.allclose(loss, expected, atol=1e-5) and torch.allclose(lm_loss, supervised)
    assert trainer.step_logs["reward"] == pytest.approx(float(reward.mean()))


def test_equal_rewards_leave_only_the_supervised_anchor(tmp_path):
    trainer = make_reward_trainer(tmp_path, labeler=lambda text: {}, anchor_weight=0.5)
    _fixed(trainer, [["a", "b", "c", "d"], ["e", "f"]])
    batch = trainer.collator(trainer.train_set[:2])
    batch.pop("ids")
    loss, lm_loss, _ = trainer._batch_loss(dict(batch), [0, 1])  # noqa: SLF001
    assert torch.allclose(loss, 0.5 * lm_loss)


def test_reward_training_resumes_bit_identically_and_logs_the_rewards(tmp_path):
    straight = make_reward_trainer(tmp_path / "straight", max_steps=4)
    frozen = {k: v.clone() for k, v in straight.unwrapped.named_parameters() if not v.requires_grad}
    straight.fit()
    first = make_reward_trainer(tmp_path / "resumed", max_steps=4)
    save = first.save

    def save_then_crash():
        save()
        raise KeyboardInterrupt  # dies right after its step-2 checkpoint

    first.save = save_then_crash
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    second = make_reward_trainer(tmp_path / "resumed", max_steps=4)
    second.resume()
    assert second.progress["step"] == 2
    second.fit()
    expected, got = trainable(straight), trainable(second)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    header, *rows = (tmp_path / "resumed" / "metrics.csv").read_text().splitlines()
    assert header.split(",")[-3:] == ["reward", "baseline_reward", "greedy_reward"] and len(rows) == 4
    assert all(0.0 <= float(value) <= 1.0 for row in rows for value in row.split(",")[-3:])
    after = dict(straight.unwrapped.named_parameters())
    assert frozen and all(torch.equal(after[k], v) for k, v in frozen.items()), "the LM and the encoder stay frozen"


def test_reward_training_runs_from_a_feature_cache(tmp_path):
    trainer = make_reward_trainer(tmp_path / "run", max_steps=2, feature_cache_root=tmp_path / "cache")
    before = trainable(trainer)
    trainer.fit()
    assert any(not torch.equal(before[k], v) for k, v in trainable(trainer).items())


def test_settings_are_checked_before_any_training():
    with pytest.raises(ValueError, match="baseline must be one of"):
        RewardConfig(baseline="mean")
    with pytest.raises(ValueError, match="group baseline needs samples_per_study >= 2"):
        RewardConfig(baseline="group", samples_per_study=1)
    with pytest.raises(ValueError, match="temperature"):
        RewardConfig(temperature=0)


def test_a_fluency_term_adds_its_weighted_score_and_needs_a_scorer(tmp_path):
    labeler = lambda text: {}  # noqa: E731
    fluency = lambda references, reports: [len(r) / 10 for r in reports]  # noqa: E731
    assert rewards(["abc", "abcdefghij"], ["x", "y"], labeler, fluency=fluency, fluency_weight=0.5).tolist() == \
        pytest.approx([1.15, 1.5])
    with pytest.raises(ValueError, match="needs a fluency scorer"):
        rewards(["a"], ["b"], labeler, fluency_weight=0.5)
    with pytest.raises(ValueError, match="needs a fluency scorer: pass fluency="):
        make_reward_trainer(tmp_path, fluency_weight=0.2)


def test_sentence_bleu_scores_each_report_against_its_own_reference():
    from flamingo_lib.evaluation.metrics import sentence_bleu

    same = "The heart is normal in size. The lungs are clear."
    scores = sentence_bleu([same, same], [same, "Large right pneumothorax with mediastinal shift."])
    assert scores[0] == pytest.approx(1.0, abs=1e-6) and scores[1] < 0.1
