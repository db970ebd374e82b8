"""``flamingo_cxr_vitc_tiny``: a small timm ViT with a convolutional stem, registered with timm.

The embedded encoder until :mod:`flamingo_lib.encoders.cnn` replaced it (its frozen tokens carry
fewer of the findings: probe micro-F1 0.45 against 0.61); kept for comparison and buildable with
``ClipRecipe(timm_model_name="flamingo_cxr_vitc_tiny")``.

Why not timm's own ``test_vit`` / ``test_vit2``: trained from scratch for a few hundred steps on
5k phantom films, their 16x16 patchify stems barely learnt anything (supervised cardiomegaly AUROC
0.59-0.61 after 100 steps of batch 64, against 0.96 for logistic regression on 20x20 pixels).
Four stride-2 3x3 convolutions in place of the patchify layer ("early convolutions help
transformers see better", Xiao et al., 2021) reached 0.72 after 100 steps and 0.95 after 300, at
a lower cost per step. The stem keeps the ViT's token layout: 160 px -> 10 x 10 = 100 tokens of
width 64, which is what the Perceiver Resampler reads.

It is a plain ``timm.models.VisionTransformer`` (``HybridEmbed`` stem, no class token, attention
pooling: timm's ``map`` head, one learned query as in SigLIP) registered under :data:`MODEL_NAME`
when this module is imported. Why attention rather than average pooling: most findings are small
and a mean over 100 tokens dilutes them, so CLIP training pushed the tokens less to encode them.
Measured with the default recipe: attention-probe micro-F1 over the rendered findings on the val
films 0.45 against 0.40 (``python -m experiments.encoder_probe clip``), and the trained
Flamingo's CE micro-F1 over rendered findings 0.152 against 0.094 (``make demo``). flamingo_lib
imports this module before loading any open_clip model; plain open_clip users ``import flamingo_lib.encoders.vit``
first, then ``open_clip.create_model("local-dir:<dir>")``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from timm.models import register_model
from torch import nn

MODEL_NAME = "flamingo_cxr_vitc_tiny"


def conv_stem(channels: tuple[int, ...] = (16, 32, 64, 64)) -> nn.Sequential:
    """3x3 stride-2 conv + BatchNorm + ReLU per entry of ``channels``: stride 16 for four."""
    layers: list[nn.Module] = []
    previous = 3
    for width in channels:
        layers += [nn.Conv2d(previous, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
                   nn.ReLU(inplace=True)]
        previous = width
    return nn.Sequential(*layers)


def _create(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    from timm.layers import HybridEmbed
    from timm.models.vision_transformer import VisionTransformer

    if pretrained:
        raise ValueError(f"{MODEL_NAME} has no published weights: it is pretrained in-project "
                         "(flamingo_lib.encoders.embedded)")
    args: dict[str, Any] = dict(img_size=160, patch_size=1, embed_dim=64, depth=4, num_heads=2, mlp_ratio=2.0,
                                class_token=False, global_pool="map", num_classes=1000)
    # timm.create_model passes its pretrained-config plumbing along; a from-scratch model has none.
    args.update({k: v for k, v in kwargs.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")})
    # patch_size=1: the stem already downsamples 16x; HybridEmbed projects its 64 channels per cell.
    model = VisionTransformer(embed_layer=partial(HybridEmbed, backbone=conv_stem()), **args)
    # What timm's build_model_with_cfg would attach; open_clip's TimmModel reads default_cfg.
    model.pretrained_cfg = model.default_cfg = {
        "architecture": MODEL_NAME, "input_size": (3, args["img_size"], args["img_size"]), "pool_size": None,
        "num_classes": args["num_classes"], "first_conv": "patch_embed.backbone.0", "classifier": "head",
    }
    return model


@register_model
def flamingo_cxr_vitc_tiny(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """The embedded encoder's trunk: conv stem, 4 blocks, width 64, 2 heads, 160 px, 100 tokens,
    attention pooling."""
    return _create(pretrained, **kwargs)
