"""experiments/trunk_locality: the exact per-cell split of the trunk's label logits, and its pointing game."""

from __future__ import annotations

import pytest
import torch

from experiments.trunk_locality import max_pool_attribution, pointing_hits
from flamingo_lib.encoders.pretraining.clip import ClipRecipe
from flamingo_lib.encoders.cnn import GridConvNet
from flamingo_lib.encoders.pretraining.labels import label_head, pretrain_trunk_on_labels
from flamingo_lib.modeling.backbones.vision import OPENAI_MEAN, OPENAI_STD

SIZE = 64  # a 4 x 4 token grid
PREPROCESS = {"mean": list(OPENAI_MEAN), "std": list(OPENAI_STD), "size": SIZE}
RECIPE = ClipRecipe(image_size=SIZE, batch_size=16, steps=3, lr=3e-3, warmup_steps=5, max_shift=2)


def test_the_attribution_splits_each_logit_exactly_over_the_cells():
    torch.manual_seed(0)
    tokens, head = torch.randn(5, 9, 12), torch.nn.Linear(12, 3)
    contributions = max_pool_attribution(tokens, head.weight)
    assert contributions.shape == (5, 3, 9)
    torch.testing.assert_close(contributions.sum(-1) + head.bias, head(tokens.amax(1)))
    # A channel's maximum is credited to its cell only: a cell that wins no channel gets nothing.
    tokens[:, 4] = -10.0
    assert max_pool_attribution(tokens, head.weight)[:, :, 4].abs().max() == 0


def test_pointing_hits_counts_the_peak_cell_against_the_mask_and_reports_chance():
    contributions = torch.zeros(2, 14, 4)  # 2 films, a 2 x 2 grid; Cardiomegaly is observation 2
    contributions[0, 2, 3] = 1.0  # peak in the bottom-right cell
    contributions[1, 2, 0] = 1.0  # peak in the top-left cell
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[6, 6] = True  # touches the bottom-right cell only: chance 1/4
    result = pointing_hits(contributions, [{"cardiomegaly": mask, "sutures": torch.zeros(8, 8, dtype=torch.bool)},
                                           {"cardiomegaly": mask}])
    assert result["cardiomegaly"] == {"n": 2, "hit": 0.5, "chance": 0.25}
    assert "sutures" not in result  # an empty mask is not scored
    assert result["overall"]["n"] == 2


def _films(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Gray films; every other one holds a bright 6x6 "nodule" (Lung Lesion) with its mask."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(60, 90, (n, SIZE, SIZE), generator=generator).to(torch.uint8)
    labels, masks = torch.zeros(n, 14), []
    for i in range(n):
        mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
        if i % 2 == 0:
            y, x = torch.randint(4, SIZE - 10, (2,), generator=generator).tolist()
            images[i, y:y + 6, x:x + 6] = 250
            mask[y:y + 6, x:x + 6] = True
            labels[i, 4] = 1.0  # Lung Lesion
        masks.append({"nodule": mask})
    return images, labels, masks


def test_a_trunk_whose_evidence_is_the_nodules_brightness_points_at_every_nodule():
    # A fixed "trunk": one token channel per cell, its mean brightness; the lesion logit reads it
    # with weight +1, so the evidence peaks where the nodule is (and with -1, away from it).
    images, _, masks = _films(32, seed=1)
    tokens = torch.nn.functional.avg_pool2d(images[:, None].float(), 16).flatten(2).transpose(1, 2)  # (N, 16, 1)
    weight = torch.zeros(14, 1)
    weight[4] = 1.0
    located = pointing_hits(max_pool_attribution(tokens, weight), masks)["nodule"]
    assert located["n"] == 16 and located["hit"] == 1.0 and 0 < located["chance"] < 0.3
    assert pointing_hits(max_pool_attribution(tokens, -weight), masks)["nodule"]["hit"] <= 0.25


def test_a_caller_label_head_trains_the_same_trunk_as_none_and_a_mis_sized_head_is_refused():
    images, labels, _ = _films(32, seed=0)
    trunks = []
    for pass_head in (False, True):
        torch.manual_seed(0)
        trunk = GridConvNet(num_classes=0, img_size=SIZE)
        head = label_head(trunk, 14, seed=0) if pass_head else None
        before = None if head is None else head.weight.detach().clone()
        pretrain_trunk_on_labels(trunk, images, labels, PREPROCESS, RECIPE, seed=0, progress=False, head=head)
        if head is not None:
            assert not torch.equal(head.weight, before)  # the caller's head is the one trained
        trunks.append(trunk.state_dict())
    assert all(torch.equal(trunks[0][k], trunks[1][k]) for k in trunks[0])
    with pytest.raises(ValueError, match="head must map 128 -> 14, got 128 -> 3"):
        pretrain_trunk_on_labels(GridConvNet(num_classes=0, img_size=SIZE), images, labels, PREPROCESS, RECIPE, 0,
                                 progress=False, head=torch.nn.Linear(128, 3))
