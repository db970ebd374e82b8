"""Training loop: learning, bit-identical resume, NaN reporting, cached-feature training, outputs."""

from __future__ import annotations

import json

import pytest
import torch

from flamingo_lib import FlamingoModel
from flamingo_lib.training.trainer import epoch_order
from trainers import make_trainer


def trainable(trainer):
    return {k: v.clone() for k, v in trainer.unwrapped.state_dict_trainable().items()}


def test_training_lowers_the_loss_and_writes_its_outputs(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=24)
    summary = trainer.fit()
    losses = [h["train_loss"] for h in summary and trainer.progress["history"]]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4
    assert summary["val_losses"][-1] < summary["val_losses"][0]
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0] == "step,epoch,train_loss,val_loss,lr,samples_per_s" and len(lines) == 25
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 24
    reloaded = FlamingoModel.from_pretrained(tmp_path / "model")
    assert all(torch.equal(reloaded.state_dict_trainable()[k], v) for k, v in trainable(trainer).items())
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("recipe", [{}, {"repeat_factor_threshold": 0.5},
                                    {"ff_gate_lr_mult": 30.0, "ff_gate_open_step": 4}, {"findings_loss_weight": 1.0},
                                    {"findings_loss_weight": 1.0, "findings_tokens": True,
                                     "findings_tokens_teacher": 0.5},
                                    {"findings_loss_weight": 1.0, "findings_tokens": True, "prior_findings_tokens": True,
                                     "findings_tokens_teacher": 0.5}])
def test_interrupted_then_resumed_training_is_bit_identical(tmp_path, recipe):
    rfs = recipe
    straight = make_trainer(tmp_path / "straight", max_steps=6, **rfs)
    straight.fit()
    first = make_trainer(tmp_path / "resumed", max_steps=6, **rfs)
    save = first.save

    def save_then_crash():
        save()
        raise KeyboardInterrupt  # the run dies right after its step-3 checkpoint

    first.save = save_then_crash
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    second = make_trainer(tmp_path / "resumed", max_steps=6, **rfs)  # a new process: fresh model
    second.resume()
    assert second.progress["step"] == 3
    second.fit()
    expected, got = trainable(straight), trainable(second)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    # the data order crossed an epoch boundary (8 samples or more, 3 per step) and was replayed
    assert second.progress["epoch"] >= 1
    steps = [line.split(",")[0] for line in (tmp_path / "resumed" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == ["1", "2", "3", "4", "5", "6"]


def test_batches_made_by_worker_processes_train_what_the_main_process_trains_through_a_resume(tmp_path):
    straight = make_trainer(tmp_path / "straight", max_steps=6, feature_cache_root=tmp_path / "features",
                            repeat_factor_threshold=0.5)
    straight.fit()
    first = make_trainer(tmp_path / "workers", max_steps=6, feature_cache_root=tmp_path / "features", num_workers=2,
                         repeat_factor_threshold=0.5)
    save = first.save

    def save_then_crash():
        save()
        raise KeyboardInterrupt  # the workers had batches past step 3 ready: the checkpoint must not count them

    first.save = save_then_crash
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    second = make_trainer(tmp_path / "workers", max_steps=6, feature_cache_root=tmp_path / "features", num_workers=2,
                          repeat_factor_threshold=0.5)
    second.resume()
    second.fit()
    expected, got = trainable(straight), trainable(second)
    assert all(torch.equal(expected[k], got[k]) for k in expected) and second.progress["epoch"] >= 1
    losses = [line.split(",")[2] for line in (tmp_path / "straight" / "metrics.csv").read_text().splitlines()[1:]]
    assert [line.split(",")[2] for line in (tmp_path / "workers" / "metrics.csv").read_text().splitlines()[1:]] == losses


def test_repeat_factor_sampling_reaches_the_trainers_batches(tmp_path):
    # four classes, each in 2 of 8 studies: at threshold 1 every study is repeated sqrt(4) = 2 times
    trainer = make_trainer(tmp_path, repeat_factor_threshold=1.0)
    seen = [i for _ in range(16 // 3) for i in trainer._next_indices()]
    assert trainer.repeat_factors == pytest.approx([2.0] * 8)
    assert max(seen.count(i) for i in range(8)) == 2 and trainer.progress["epoch"] == 0


def test_feed_forward_gates_stay_shut_until_their_opening_step(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=6, gate_lr_mult=30.0, ff_gate_lr_mult=30.0, ff_gate_open_step=3)
    ff_gates = {n: p for n, p in trainer.unwrapped.named_parameters() if n.endswith("ff_gate")}
    attn_gates = {n: p for n, p in trainer.unwrapped.named_parameters() if n.endswith("attn_gate")}
    history = []
    step = trainer.save

    def record():
        history.append((trainer.progress["step"], {n: float(p.detach()) for n, p in ff_gates.items()}))
        step()

    trainer.save = record  # save_every=3: after steps 3 and 6
    trainer.fit()
    assert history[0][0] == 3 and all(v == 0.0 for v in history[0][1].values())  # steps 1-3: lr factor 0
    assert any(v != 0.0 for v in history[1][1].values())  # steps 4-6: open
    assert any(float(p.detach()) != 0.0 for p in attn_gates.values())
    with pytest.raises(ValueError, match="would never open"):
        make_trainer(tmp_path / "never", ff_gate_lr_mult=0.0, ff_gate_open_step=2)


def test_a_new_run_into_a_used_directory_is_refused_unless_it_may_overwrite(tmp_path):
    make_trainer(tmp_path, max_steps=4).fit()
    kept = (tmp_path / "checkpoint.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="--resume .* --overwrite"):
        make_trainer(tmp_path, max_steps=3).fit()
    assert (tmp_path / "checkpoint.safetensors").read_bytes() == kept  # nothing of the run was touched
    make_trainer(tmp_path, max_steps=3, overwrite=True).fit()  # asked for: a new run, a new metrics file
    steps = [line.split(",")[0] for line in (tmp_path / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == ["1", "2", "3"]


def test_a_resume_under_other_settings_is_refused_naming_each_difference(tmp_path):
    make_trainer(tmp_path, max_steps=3).fit()
    with pytest.raises(ValueError, match=r"lr 0.003 -> 10.0, seed 0 -> 5"):
        make_trainer(tmp_path, max_steps=6, lr=10.0, seed=5).resume()
    longer = make_trainer(tmp_path, max_steps=6, eval_every=2)  # how long and how often: allowed
    longer.resume()
    assert longer.fit()["steps"] == 6


def test_the_checkpoint_holds_tensors_and_json_and_a_pickled_one_is_never_loaded(tmp_path):
    from safetensors import safe_open

    make_trainer(tmp_path / "run", max_steps=3).fit()
    with safe_open(str(tmp_path / "run" / "checkpoint.safetensors"), framework="pt") as handle:
        assert handle.metadata()["format"].startswith("flamingo-training-state")
    # a shared run folder with a pickle that runs code when loaded
    planted = tmp_path / "shared"
    planted.mkdir()
    witness = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(witness), "w"))

    torch.save({"model": Payload()}, planted / "checkpoint.pt")
    with pytest.raises(FileNotFoundError, match="pickled checkpoint"):
        make_trainer(planted, max_steps=3).resume()
    assert not witness.exists()


def test_resume_without_checkpoint_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        make_trainer(tmp_path).resume()


def test_non_finite_loss_is_reported_with_the_batch_ids(tmp_path):
    trainer = make_trainer(tmp_path)
    collate = trainer.collator.__call__

    def poisoned(samples):
        batch = collate(samples)
        if any(i.startswith("toy-2") for i in batch["ids"]):
            batch["pixel_values"] = batch["pixel_values"] * float("nan")
        return batch

    trainer.collator = type("C", (), {"__call__": staticmethod(poisoned), "processor": trainer.collator.processor})()
    with torch.no_grad():
        for p in trainer.unwrapped.parameters():
            if p.ndim == 1 and p.numel() == 1:
                p.fill_(0.5)  # open gates: NaN images must reach the loss
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step \d+ on samples .*toy-2"):
        trainer.fit()


def test_training_from_cached_features_never_calls_the_encoder(tmp_path):
    trainer = make_trainer(tmp_path / "run", max_steps=4, feature_cache_root=tmp_path / "features")
    calls = []
    hook = trainer.unwrapped.flamingo.vision_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        trainer.fit()
    finally:
        hook.remove()
    assert calls == [] and trainer.progress["step"] == 4


def test_epoch_order_is_a_fixed_permutation_per_epoch():
    assert sorted(epoch_order(10, 0, 0)) == list(range(10))
    assert epoch_order(10, 0, 0) == epoch_order(10, 0, 0) != epoch_order(10, 0, 1)


def test_command_line_trains_with_the_findings_and_reading_head_and_resumes_on_templated_phantom_data(tmp_path):
    from flamingo_lib.cli.train import main

    common = ["--preset", "tiny-random", "--data", "phantom:templated", "--out", str(tmp_path / "run"),
              "--image-size", "160", "--max-train-samples", "12", "--max-val-samples", "4", "--batch-size", "4",
              "--eval-every", "2", "--save-every", "2", "--warmup-steps", "1", "--findings-targets", "both",
              "--findings-loss-weight", "1", "--findings-tokens", "--reading-head", "true"]
    first = main([*common, "--max-steps", "2", "--cache-features", str(tmp_path / "features")])
    assert first["steps"] == 2 and (tmp_path / "run" / "checkpoint.safetensors").exists()
    assert first["config"]["findings_targets"] == "both" and first["config"]["findings_loss_weight"] == 1.0
    tokens_after_2 = FlamingoModel.from_pretrained(tmp_path / "run" / "model").flamingo.findings_tokens.present
    from flamingo_lib.inference.film_reference import FilmReference

    from_cache = FilmReference.load(tmp_path / "run" / "model")  # beside the weights, from the cached features
    resumed = main([*common, "--max-steps", "4", "--resume"])
    assert resumed["steps"] == 4
    live = FilmReference.load(tmp_path / "run" / "model")  # rebuilt by the encoder itself: the same films, and
    # the same embeddings up to the cache's half-precision storage
    assert len(live.embeddings) == 12 and torch.allclose(live.embeddings, from_cache.embeddings, atol=1e-3)
    reloaded = FlamingoModel.from_pretrained(tmp_path / "run" / "model")
    assert reloaded.config.findings_tokens and not torch.equal(reloaded.flamingo.findings_tokens.present, tokens_after_2)
    assert reloaded.config.reading_head and reloaded.flamingo.findings_head.classifier.out_features == 2 * 13
    with pytest.raises(ValueError, match="findings_tokens needs the findings head"):  # the tokens spell out its verdict
        main([*common[:-5], "--findings-loss-weight", "0", "--findings-tokens", "--max-steps", "1"])
    with pytest.raises(ValueError, match="reading_head needs the findings head"):  # the head's second output
        main([*common[:-5], "--findings-loss-weight", "0", "--reading-head", "true", "--max-steps", "1"])
    assert len((tmp_path / "run" / "metrics.csv").read_text().splitlines()) == 5
    from flamingo_lib.pipeline.run_records import model_directory, training_record  # what evaluate_on reads back

    assert model_directory(tmp_path / "run") == tmp_path / "run" / "model"
    assert training_record(tmp_path / "run" / "model") == {"data": "phantom:templated", "image_size": 160,
                                                           "max_train_samples": 12, "seed": 0,
                                                           "feature_storage": "float16"}
    assert reloaded.config.only_attend_immediate_media  # the default: the latest image only
    every_view = [*common[:4], "--out", str(tmp_path / "every"), *common[6:], "--max-steps", "1",
                  "--no-only-attend-immediate-media"]
    main(every_view)
    assert not FlamingoModel.from_pretrained(tmp_path / "every" / "model").config.only_attend_immediate_media


def test_tensorboard_events_are_written_when_tensorboard_is_installed(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is optional; metrics.csv is always written")
    make_trainer(tmp_path, max_steps=2).fit()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_gates_get_their_own_learning_rate_and_no_weight_decay(tmp_path):
    """One step from the same start: a gate moves gate_lr_mult times as far (Adam's first step is
    lr * sign(grad)), every other parameter exactly as far as without the multiplier."""
    moved = {}
    for mult in (1.0, 10.0):
        trainer = make_trainer(tmp_path / str(mult), max_steps=1, gate_lr_mult=mult, warmup_steps=0)
        before = trainable(trainer)
        groups = trainer.optimiser.param_groups
        gate_group = [g for g in groups if any(p.ndim == 1 and p.numel() == 1 for p in g["params"])
                      and all(p.numel() == 1 for p in g["params"])]
        assert len(gate_group) == 2 and all(g["weight_decay"] == 0.0 for g in gate_group)  # attention, ff
        trainer.fit()
        moved[mult] = {k: (v - before[k]).abs() for k, v in trainable(trainer).items()}
    for name, delta in moved[1.0].items():
        if name.endswith("_gate"):
            assert delta.item() > 0 and moved[10.0][name].item() == pytest.approx(10 * delta.item(), rel=1e-3)
        else:
            assert torch.allclose(moved[10.0][name], delta, atol=1e-7), name


def test_feedforward_gates_get_their_own_multiple_and_zero_holds_them_shut(tmp_path):
    """ff_gate_lr_mult=0: the feed-forward gates (and so the text-only feed-forward path) stay
    exactly at 0 while the attention gates move; None keeps the attention gates' multiple."""
    trainer = make_trainer(tmp_path / "shut", max_steps=3, warmup_steps=0, ff_gate_lr_mult=0.0)
    before = trainable(trainer)
    trainer.fit()
    after = trainable(trainer)
    ff = [k for k in before if k.endswith("ff_gate")]
    attn = [k for k in before if k.endswith("attn_gate")]
    assert ff and attn
    assert all(torch.equal(after[k], before[k]) for k in ff)
    assert all(not torch.equal(after[k], before[k]) for k in attn)
    same = make_trainer(tmp_path / "same", max_steps=1, gate_lr_mult=7.0)
    gate_lrs = {g["initial_lr"] for g in same.optimiser.param_groups if all(p.numel() == 1 for p in g["params"])}
    assert gate_lrs == {same.config.lr * 7.0}


def test_each_epochs_order_is_drawn_once_and_batches_walk_through_it(tmp_path, monkeypatch):
    import flamingo_lib.training.trainer as trainer_module
    from flamingo_lib.training.sampling import epoch_order

    drawn = []
    monkeypatch.setattr(trainer_module, "epoch_order",
                        lambda n, seed, epoch, factors=None: drawn.append(epoch) or epoch_order(n, seed, epoch, factors))
    trainer = make_trainer(tmp_path, repeat_factor_threshold=0.5)
    batches = [trainer._next_indices() for _ in range(11)]  # 3 studies a batch: 5 per epoch of 16 or so
    epochs = trainer.progress["epoch"]
    assert epochs >= 2 and drawn == list(range(epochs + 1))  # one draw per epoch, however many batches
    expected, epoch = [], 0
    while len(expected) < 11:
        order = epoch_order(len(trainer.train_set), 0, epoch, trainer.repeat_factors)
        expected += [order[start:start + 3] for start in range(0, len(order) - 2, 3)]
        epoch += 1
    assert batches == expected[:11]
