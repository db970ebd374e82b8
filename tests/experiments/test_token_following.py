"""The token-following probe: the heads' verdicts scored as reports, and greedy reports with given tokens."""

from __future__ import annotations

import functools

import pytest
import torch

from experiments.token_following import UNSTATED, greedy_with_tokens, head_verdicts, verdict_scores


@pytest.fixture(scope="module")
def token_model():
    from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor
    from flamingo_lib.observations import FINDINGS_OBSERVATIONS

    config = FlamingoConfig.from_preset("tiny-random", findings_head=list(FINDINGS_OBSERVATIONS), findings_tokens=True,
                                        reading_head=True)
    return FlamingoModel(config).eval(), FlamingoProcessor(config)


def test_a_verdict_equal_to_the_truth_scores_one_but_never_states_what_no_report_does():
    observations = ["Cardiomegaly", "Edema", *UNSTATED]
    truth = [{"Cardiomegaly": 1.0}, {"Edema": 1.0, UNSTATED[0]: 1.0}, {}]
    exact = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.9], [0.1, 0.1, 0.1]])
    references = [{"Cardiomegaly": 1.0}, {"Cardiomegaly": 1.0}, {}]
    table = verdict_scores({"findings": exact}, observations, truth, references, thresholds=(0.5,))
    row = table.iloc[0]
    assert row["vs image truth"] == pytest.approx(2 * 2 / (2 * 2 + 1))  # the unstated positive is a miss
    assert row["vs reference"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))


def test_greedy_reads_the_given_tokens_and_the_heads_without_them(token_model):
    from flamingo_lib.inference.batched import generate_in_batches
    from trainers import SAMPLES

    model, processor = token_model
    samples = SAMPLES[:2]
    observations = list(model.config.findings_head)
    given = [{"Edema": 1.0}, {"Cardiomegaly": 1.0, "Edema": 0.0}]
    seen, forward = [], model.forward

    @functools.wraps(forward)  # generate() checks its keyword arguments against forward's signature
    def recording(*args, **kwargs):
        seen.append(kwargs.get("token_findings"))
        return forward(*args, **kwargs)

    model.forward = recording
    try:
        taught = greedy_with_tokens(model, processor, samples, given)
        assert {tuple(t[0].tolist()) for t in seen if t is not None} == {
            tuple(float(g.get(o) == 1.0) for o in observations) for g in given}
        seen.clear()
        plain = greedy_with_tokens(model, processor, samples, None)
        assert all(t is None for t in seen)
    finally:
        del model.forward
    assert len(taught) == 2 and plain == generate_in_batches(model, processor, samples, batch_size=1, progress=False).reports
    verdicts = head_verdicts(model, processor, samples)
    assert set(verdicts) == {"findings", "readings", "mean"}
    assert torch.allclose(verdicts["mean"], (verdicts["findings"] + verdicts["readings"]) / 2)
