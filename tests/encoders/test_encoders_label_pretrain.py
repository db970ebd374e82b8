"""The embedded vision trunk's pretraining on report labels, and CLIP fitted to the locked trunk (LiT)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from flamingo_lib.encoders.pretraining.clip import ClipRecipe, build_clip, open_clip_config, pretrain_clip
from flamingo_lib.encoders.pretraining.labels import pretrain_trunk_on_labels
from flamingo_lib.labeling.targets import FindingTargets
from flamingo_lib.modeling.backbones.vision import OPENAI_MEAN, OPENAI_STD

SIZE = 32
PREPROCESS = {"mean": list(OPENAI_MEAN), "std": list(OPENAI_STD), "size": SIZE}


def _films(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (n, SIZE, SIZE) gray films; label 0 = a bright 4x4 square somewhere, label 1 = never set."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(60, 90, (n, SIZE, SIZE), generator=generator).to(torch.uint8)
    labels = torch.zeros(n, 2)
    for i in range(0, n, 2):
        y, x = torch.randint(2, SIZE - 6, (2,), generator=generator).tolist()
        images[i, y:y + 4, x:x + 4] = 250
        labels[i, 0] = 1.0
    return images, labels


def _recipe(**changes) -> ClipRecipe:
    return dataclasses.replace(ClipRecipe(image_size=SIZE, batch_size=16, steps=60, lr=3e-3, warmup_steps=5,
                                          max_shift=2, vocab_size=64, context_length=8), **changes)


def test_the_trunk_learns_the_labelers_positive_readings_only():
    # The encoder build's targets (FindingTargets, shared with the findings head), real labeler.
    labels = FindingTargets(("Cardiomegaly", "Pleural Effusion"))(
        ["Moderate cardiomegaly. No pleural effusion.", "Possible small left pleural effusion."])
    # Negated and uncertain mentions are not positive (the R2Gen convention the evaluation uses).
    assert labels.tolist() == [[1.0, 0.0], [0.0, 0.0]]


def test_label_pretraining_teaches_the_trunk_a_local_finding_its_random_init_does_not_separate():
    import flamingo_lib.encoders.cnn  # noqa: F401
    import timm

    images, labels = _films()
    held_out, held_labels = _films(32, seed=1)
    trunk = timm.create_model(_recipe().timm_model_name, num_classes=0, img_size=SIZE)  # the default trunk
    stats = pretrain_trunk_on_labels(trunk, images, labels, PREPROCESS, _recipe(), seed=0, progress=False)
    assert stats["label_steps"] == 60 and stats["label_loss_curve"][-1][1] < stats["label_loss_curve"][0][1]
    assert not trunk.training
    # A linear read-out of the pooled features (fitted here on the training films) separates
    # held-out films with the square from those without.
    from flamingo_lib.encoders.pretraining.clip import normalise

    with torch.no_grad():
        train_x = trunk.forward_head(trunk.forward_features(normalise(images, PREPROCESS)), pre_logits=True)
        test_x = trunk.forward_head(trunk.forward_features(normalise(held_out, PREPROCESS)), pre_logits=True)
    mean_pos, mean_neg = train_x[labels[:, 0] == 1].mean(0), train_x[labels[:, 0] == 0].mean(0)
    score = test_x @ (mean_pos - mean_neg)
    positives, negatives = score[held_labels[:, 0] == 1], score[held_labels[:, 0] == 0]
    assert (positives[:, None] > negatives[None, :]).float().mean() > 0.95


def test_label_pretraining_is_seeded_and_rejects_labels_of_the_wrong_length():
    import flamingo_lib.encoders.cnn  # noqa: F401
    import timm

    images, labels = _films(32)
    trunks = []
    for _ in range(2):
        torch.manual_seed(0)
        trunk = timm.create_model(_recipe().timm_model_name, num_classes=0, img_size=SIZE)  # the default trunk
        pretrain_trunk_on_labels(trunk, images, labels, PREPROCESS, _recipe(steps=5), seed=3, progress=False)
        trunks.append(trunk.state_dict())
    assert all(torch.equal(trunks[0][k], trunks[1][k]) for k in trunks[0])
    with pytest.raises(ValueError, match=r"labels must be \(N=32, K\), got \(31, 2\)"):
        pretrain_trunk_on_labels(trunk, images, labels[:31], PREPROCESS, _recipe(steps=5), seed=0, progress=False)


def test_lit_fits_the_text_tower_and_projection_and_leaves_the_trunk_bitwise_alone():
    recipe = _recipe(steps=10, batch_size=8)
    config = open_clip_config(recipe, vocab_size=64)
    model = build_clip(config, seed=0)
    images, _ = _films(32)
    texts = torch.randint(3, 64, (32, recipe.context_length))
    texts[:, -1] = 2  # </s>, where the text tower pools
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = pretrain_clip(model, images, texts, list(range(32)), config["preprocess_cfg"], recipe, seed=0,
                          progress=False, lock_trunk=True)
    after = model.state_dict()
    trunk_keys = [k for k in before if k.startswith("visual.trunk.")]
    assert trunk_keys and all(torch.equal(before[k], after[k]) for k in trunk_keys)  # weights and BN buffers
    assert not torch.equal(before["visual.head.proj.weight"], after["visual.head.proj.weight"])
    assert not torch.equal(before["text_projection"], after["text_projection"])
    assert stats["samples_seen"] == 10 * 8
    # Without the lock the same call trains the trunk too.
    unlocked = build_clip(config, seed=0)
    pretrain_clip(unlocked, images, texts, list(range(32)), config["preprocess_cfg"], recipe, seed=0, progress=False)
    assert not all(torch.equal(before[k], unlocked.state_dict()[k]) for k in trunk_keys)


def test_an_unknown_trunk_objective_is_refused_when_the_recipe_is_made():
    with pytest.raises(ValueError, match="trunk_objective must be 'labels' or 'clip', got 'contrastive'"):
        ClipRecipe(trunk_objective="contrastive")


class _Stop(Exception):
    pass


@pytest.mark.parametrize("source", ["labels", "reports"])
def test_the_build_pretrains_the_trunk_on_the_targets_its_recipe_names(source, tmp_path, monkeypatch):
    """``trunk_targets`` picks each film's own labels (the phantom's image truth) or the labeler's
    reading of its report, as ``FindingTargets.for_samples`` does for the findings head."""
    from flamingo_lib.data.sample import CHEXPERT_OBSERVATIONS
    from flamingo_lib.encoders.pretraining import vision_build as clip_build
    from flamingo_lib.encoders.pretraining.corpus import studies
    from flamingo_lib.labeling.labeler import label_report

    seen = {}

    def capture(trunk, images, targets, *args, **kwargs):
        seen["targets"] = targets
        raise _Stop  # what follows (LiT, probes) is not what this test is about

    monkeypatch.setattr(clip_build, "pretrain_trunk_on_labels", capture)
    monkeypatch.setattr(clip_build, "render_images", lambda items, *a, **k: torch.zeros(len(items), 8, 8, dtype=torch.uint8))
    recipe = _recipe(trunk_targets=source, max_train_images=200, max_eval_images=4, vocab_size=300)
    with pytest.raises(_Stop):
        clip_build.build_clip_dir(tmp_path, recipe, seed=0, data_seed=0, progress=False)
    train = clip_build._subset([s for s in studies("train", 0) if s.report], 200, 0)
    films = torch.tensor([[float(s.labels.get(o) == 1.0) for o in CHEXPERT_OBSERVATIONS] for s in train])
    readings = torch.tensor([[float(label_report(s.report).get(o) == 1.0) for o in CHEXPERT_OBSERVATIONS]
                             for s in train])
    assert not torch.equal(films, readings)  # the reports leave findings unsaid or hedged
    assert torch.equal(seen["targets"], films if source == "labels" else readings)


def test_an_unknown_trunk_target_source_is_refused_when_the_recipe_is_made():
    with pytest.raises(ValueError, match=r"trunk_targets must be one of \('labels', 'reports', 'both'\), got 'films'"):
        ClipRecipe(trunk_targets="films")
