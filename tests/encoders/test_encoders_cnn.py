"""The embedded encoder's convolutional trunk: grid tokens, max pooling, timm and open_clip plumbing."""

from __future__ import annotations

import pytest
import timm
import torch

import flamingo_lib.encoders.cnn  # noqa: F401  (registers the trunk)
from flamingo_lib.encoders.cnn import MODEL_NAME, GridConvNet


def test_tokens_are_the_row_major_grid_of_the_last_feature_map():
    net = GridConvNet(num_classes=0).eval()
    x = torch.randn(2, 3, 160, 160)
    tokens = net.forward_features(x)
    assert tokens.shape == (2, 100, 128) and net.num_features == 128
    grid = net.stem(x)  # (2, 128, 10, 10)
    assert torch.equal(tokens[:, 13], grid[:, :, 1, 3])  # token 13 = row 1, column 3


def test_pooled_output_is_the_maximum_over_tokens_so_one_local_response_survives():
    net = GridConvNet(num_classes=0).eval()
    tokens = torch.zeros(1, 100, 128)
    tokens[0, 57, 5] = 3.0  # a single cell responding
    pooled = net.forward_head(tokens, pre_logits=True)
    assert pooled[0, 5] == 3.0 and pooled.abs().sum() == 3.0
    with torch.no_grad():
        assert torch.equal(net(torch.ones(1, 3, 160, 160)), net.forward_features(torch.ones(1, 3, 160, 160)).amax(1))


def test_timm_builds_it_by_name_and_its_classifier_can_be_reset():
    model = timm.create_model(MODEL_NAME, num_classes=7, pretrained_cfg=None)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 7)
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 128)
    with pytest.raises(ValueError, match="maximum over tokens"):
        model.reset_classifier(0, global_pool="avg")
    with pytest.raises(ValueError, match="no published weights"):
        timm.create_model(MODEL_NAME, pretrained=True)


def test_the_small_trunk_is_the_tiny_layout_with_two_convolutions_per_stage_and_the_same_tokens():
    small = timm.create_model("flamingo_cxr_cnn_small", num_classes=0, pretrained_cfg=None).eval()
    tiny = timm.create_model(MODEL_NAME, num_classes=0, pretrained_cfg=None)
    convs = [m for m in small.stem if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride[0] for c in convs] == [2, 1, 2, 1, 2, 1, 2, 1, 1]
    assert len([m for m in tiny.stem if isinstance(m, torch.nn.Conv2d)]) == 5
    assert small.forward_features(torch.randn(1, 3, 160, 160)).shape == (1, 100, 128)
    assert small.pretrained_cfg["architecture"] == "flamingo_cxr_cnn_small"
    with pytest.raises(ValueError, match="flamingo_cxr_cnn_small has no published weights"):
        timm.create_model("flamingo_cxr_cnn_small", pretrained=True)


def _receptive_field_width(net: torch.nn.Module, row: int, col: int) -> int:
    """Columns of a 160-px input that the token at (row, col) of the 10 x 10 grid depends on."""
    x = torch.randn(1, 3, 160, 160, requires_grad=True)
    net.forward_features(x)[0, row * 10 + col].sum().backward()
    columns = x.grad.abs().sum(dim=(0, 1, 2)).nonzero().flatten()
    return int(columns.max() - columns.min() + 1)


def test_the_local_trunk_is_the_small_one_without_the_context_convolution_so_its_tokens_see_91_px():
    torch.manual_seed(0)
    local = timm.create_model("flamingo_cxr_cnn_local", num_classes=0, pretrained_cfg=None).eval()
    small = timm.create_model("flamingo_cxr_cnn_small", num_classes=0, pretrained_cfg=None).eval()
    convs = [m for m in local.stem if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride[0] for c in convs] == [2, 1, 2, 1, 2, 1, 2, 1]
    assert local.forward_features(torch.randn(1, 3, 160, 160)).shape == (1, 100, 128)
    # a central token: nothing clipped by the border, so the width is the theoretical field
    assert _receptive_field_width(local, 5, 5) == 91
    assert _receptive_field_width(small, 5, 5) == 123
    assert local.pretrained_cfg["architecture"] == "flamingo_cxr_cnn_local"
    with pytest.raises(ValueError, match="flamingo_cxr_cnn_local has no published weights"):
        timm.create_model("flamingo_cxr_cnn_local", pretrained=True)
