"""A training step that can be one graph: length buckets that leave the loss unchanged, no host
reads between log points but the non-finite check, the compiled step equal to the eager one and
compiled once per bucket, and the fused AdamW update equal to the unfused one.

The compiled-step equality runs inductor (about 15 s here on one thread); the recompilation count
runs ``aot_eager``: dynamo's guards, which decide a recompilation, are the same for every backend.
"""

from __future__ import annotations

import copy
import functools
import sys
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from conftest import open_gates
from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor
from flamingo_lib.training.config import TrainConfig
from flamingo_lib.training.optimisation import adamw, parameter_groups
from flamingo_lib.training.trainer import ReportCollator
from trainers import SAMPLES, make_trainer

# reads elsewhere in flamingo_lib.training are of host tensors (the epoch's order, drawn on the CPU)
TRAINER_CODE = str(Path(__file__).resolve().parents[2] / "flamingo_lib" / "training" / "trainer.py")


def trainable(trainer):
    return {k: v.clone() for k, v in trainer.unwrapped.state_dict_trainable().items()}


def loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = model(**{k: v for k, v in batch.items() if k != "ids"}).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_bucket_padding_changes_neither_the_loss_nor_the_gradients():
    config = FlamingoConfig.from_preset("tiny-random")
    model, processor = FlamingoModel(config), FlamingoProcessor(config)
    open_gates(model)  # so the images, and the cross-attention masks over the padding, matter
    collator = ReportCollator(processor)
    samples = SAMPLES[:3]
    plain = collator(samples)
    collator.pad_to_multiple_of = 32
    padded = collator(samples)
    length, bucket = plain["input_ids"].shape[1], padded["input_ids"].shape[1]
    assert bucket % 32 == 0 and bucket > length
    for key, fill in (("input_ids", processor.tokenizer.pad_token_id), ("attention_mask", 0),
                      ("media_locations", False), ("labels", -100)):
        assert torch.equal(padded[key][:, :length], plain[key]) and (padded[key][:, length:] == fill).all(), key
    assert torch.equal(padded["pixel_values"], plain["pixel_values"])
    plain_loss, plain_grads = loss_and_grads(model, plain)
    padded_loss, padded_grads = loss_and_grads(model, padded)
    torch.testing.assert_close(padded_loss, plain_loss, rtol=1e-6, atol=1e-6)
    assert padded_grads.keys() == plain_grads.keys() and any(k.endswith("_gate") for k in plain_grads)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(padded_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    # a bucket never passes the LM's positions: the longest batch it takes is padded only that far
    collator.max_length = length + 1
    assert collator(samples)["input_ids"].shape[1] == length + 1


def count_device_reads(monkeypatch, trainer) -> list[tuple[int, str]]:
    """(step being trained, the reading file) of every tensor read to the host: ``.item()``,
    ``.tolist()``, ``bool()``, ``int()``, ``float()`` of a tensor."""
    reads: list[tuple[int, str]] = []
    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            caller = sys._getframe(1).f_code
            reads.append((trainer.progress["step"], f"{caller.co_filename}:{caller.co_name}"))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads


def test_steps_between_log_points_read_the_device_only_for_the_finite_check(tmp_path, monkeypatch):
    # eval and checkpoints at the last step only: steps 1-5 have no log point, step 6 one
    quiet = make_trainer(tmp_path / "quiet", max_steps=6, eval_every=100, save_every=100)
    reads = count_device_reads(monkeypatch, quiet)
    quiet.fit()
    monkeypatch.undo()
    ours = [(step, where.split(":")[1]) for step, where in reads if where.startswith(TRAINER_CODE)]
    # while step k + 1 trains (progress k): one read, whether its loss was finite
    assert [[name for step, name in ours if step == k] for k in range(6)] == [["_finite_everywhere"]] * 6
    # after the last step, its log point: the validation loss's reads and one read of all six steps' losses
    assert [name for step, name in ours if step == 6 and name != "validation_loss"] == ["_log_rows"]
    # logging every 2 steps: the same metrics, read three times
    every_2 = make_trainer(tmp_path / "every_2", max_steps=6, eval_every=100, save_every=100, log_every=2)
    every_2.fit()
    def metrics(run):  # all but samples_per_s, a timing
        return [line.rsplit(",", 1)[0] for line in (tmp_path / run / "metrics.csv").read_text().splitlines()]

    assert metrics("every_2") == metrics("quiet") and len(metrics("quiet")) == 7


MODEL_CODE = str(Path(__file__).resolve().parents[2] / "flamingo_lib" / "modeling")


def test_without_input_checks_the_model_reads_nothing_in_a_step_and_trains_the_same(tmp_path, monkeypatch):
    # on an accelerator the trainer turns the checks off (the processor built the batches); forced here on CPU
    # from cached features, as on a GPU (from pixels the encoder's test for empty slots reads the device)
    knobs = dict(max_steps=3, eval_every=100, save_every=100, findings_loss_weight=1.0,
                 feature_cache_root=tmp_path / "cache")
    checked = make_trainer(tmp_path / "checked", **knobs)
    checked.fit()
    quiet = make_trainer(tmp_path / "quiet", **knobs)
    quiet.unwrapped.check_inputs = False
    reads = count_device_reads(monkeypatch, quiet)
    quiet.fit()
    monkeypatch.undo()
    model_reads = [where for step, where in reads if where.startswith(MODEL_CODE) and step < 3]
    assert model_reads == []  # the <image> count, the head's image counts, the study's slots: none read
    assert quiet.unwrapped.check_inputs is False  # as it was before fit
    rows = [(tmp_path / run / "metrics.csv").read_text().splitlines() for run in ("checked", "quiet")]
    for a, b in zip(*rows):
        for x, y in zip(a.split(",")[:-1], b.split(",")[:-1]):
            assert x == y or abs(float(x) - float(y)) < 1e-6


def test_a_failure_between_log_points_still_writes_the_steps_trained(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=6, eval_every=100, save_every=100)
    step_loss = trainer._step_loss

    def fail_at_step_4(batch, indices):
        if trainer.progress["step"] == 3:
            raise KeyboardInterrupt
        return step_loss(batch, indices)

    trainer._step_loss = fail_at_step_4
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    steps = [line.split(",")[0] for line in (tmp_path / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == ["1", "2", "3"]


def bucket_lengths_and_new_graphs(trainer) -> list[tuple[int, int]]:
    """Wraps the trainer's step loss: (text length, graphs dynamo compiled) of every micro-batch."""
    seen, step_loss = [], trainer._step_loss

    def recorded(batch, indices):
        before = counters["stats"]["unique_graphs"]
        out = step_loss(batch, indices)
        seen.append((batch["input_ids"].shape[1], counters["stats"]["unique_graphs"] - before))
        return out

    trainer._step_loss = recorded
    return seen


def test_the_compiled_step_trains_as_the_eager_one(tmp_path):
    knobs = dict(max_steps=4, feature_cache_root=tmp_path / "features", pad_to_multiple_of=16, eval_every=100,
                 save_every=100)
    eager = make_trainer(tmp_path / "eager", **knobs)
    eager.fit()
    torch._dynamo.reset()
    counters.clear()
    compiled = make_trainer(tmp_path / "compiled", compile_step=True, **knobs)
    compiled.fit()
    assert counters["stats"]["unique_graphs"] > 0  # dynamo really captured graphs (not silently eager)
    losses = [[h["train_loss"] for h in t.progress["history"]] for t in (eager, compiled)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    expected, got = trainable(eager), trainable(compiled)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-5, msg=name)
    # the state dict keeps its names: checkpoints are those of an eager run
    assert expected.keys() == got.keys()


def test_the_compiled_step_compiles_once_per_length_bucket(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()
    counters.clear()
    # the toy reports make batches of 43 and 50 tokens: buckets of 48 and 64
    trainer = make_trainer(tmp_path / "run", max_steps=6, feature_cache_root=tmp_path / "features",
                           pad_to_multiple_of=16, compile_step=True, eval_every=100, save_every=100)
    seen = bucket_lengths_and_new_graphs(trainer)
    trainer.fit()
    lengths = [length for length, _ in seen]
    assert set(lengths) == {48, 64}
    first_of_each = {lengths.index(length) for length in set(lengths)}
    assert seen[0][1] > 0  # the first step compiles
    assert all(new == 0 for i, (_, new) in enumerate(seen) if i not in first_of_each), seen


def test_compile_step_is_refused_where_it_cannot_apply(tmp_path):
    with pytest.raises(ValueError, match="set one of them"):
        TrainConfig(compile=True, compile_step=True)
    with pytest.raises(ValueError, match="pad_to_multiple_of must be >= 1"):
        TrainConfig(pad_to_multiple_of=0)
    from trainers import make_reward_trainer

    with pytest.raises(ValueError, match="RewardTrainer computes its loss another way"):
        make_reward_trainer(tmp_path, compile_step=True)


def test_the_fused_adamw_update_equals_the_unfused_one():
    config = FlamingoConfig.from_preset("tiny-random")
    start, processor = FlamingoModel(config), FlamingoProcessor(config)
    open_gates(start)
    batch = ReportCollator(processor)(SAMPLES[:3])
    after = {}
    for fused in (True, False):
        model = copy.deepcopy(start)
        groups = parameter_groups(model, 3e-3, 0.1, 30.0, None)
        optimiser = (adamw(groups, 3e-3, torch.device("cpu")) if fused
                     else torch.optim.AdamW(groups, lr=3e-3, fused=False, foreach=False))
        assert optimiser.defaults["fused"] is fused  # this torch has the fused kernel on CPU
        for _ in range(3):
            loss_and_grads(model, batch)
            optimiser.step()
        after[fused] = model.state_dict_trainable()
    moved = [k for k, v in after[False].items() if not torch.equal(v, start.state_dict_trainable()[k])]
    assert moved and any(k.endswith("_gate") for k in moved)
    for name, value in after[False].items():
        torch.testing.assert_close(after[True][name], value, rtol=1e-5, atol=1e-6, msg=name)
