"""torch.compile of the blocks: same function, same parameter names, graphs shared across layers.

The ``aot_eager`` backend runs dynamo's capture and AOT autograd (where graph breaks, guards and
the backward split happen) without inductor's C++ code generation, which takes about a minute
on 2 CPU cores; inductor itself is exercised by ``bench.run --compile`` (smoke run in CI).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.utils import counters

from conftest import open_gates
from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor
from flamingo_lib.modeling import compile as compile_module
from flamingo_lib.modeling.compile import COMPILABLE_PARTS, compilable_blocks, compile_blocks
from flamingo_lib.modeling.lm_injection import decoder_layers

BACKEND = "aot_eager"


@pytest.fixture()
def open_model():
    config = FlamingoConfig.from_preset("tiny-random")
    model = FlamingoModel(config)
    open_gates(model)  # so the cross-attention changes the output (gates at 0 would hide a wrong graph)
    return model, FlamingoProcessor(config)


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_names_every_block_of_each_part(open_model):
    model, _ = open_model
    layers = len(decoder_layers(model.flamingo.lm))
    blocks = compilable_blocks(model)
    assert blocks["flamingo.perceiver"] is model.flamingo.perceiver
    assert blocks["flamingo.vision_encoder"] is model.flamingo.vision_encoder
    assert sum(name.endswith("gated_cross_attn") for name in blocks) == layers // model.config.xattn_every
    assert sum(name.startswith("lm.layers.") and not name.endswith("gated_cross_attn") for name in blocks) == layers
    only_xattn = compilable_blocks(model, ["cross_attention"])
    assert only_xattn and all(name.endswith("gated_cross_attn") for name in only_xattn)
    with pytest.raises(ValueError, match="unknown part.*'lm'.*expected some of"):
        compilable_blocks(model, ["lm"])


def test_compiled_model_computes_the_same_loss_and_gradients(open_model, images):
    model, processor = open_model
    batch = processor.training_batch(["No acute findings.", "Small left effusion."], [[images[0]], [images[1]]])
    eager_loss, eager_grads = _loss_and_grads(model, batch)
    compiled = copy.deepcopy(model)
    counters.clear()
    names = compile_blocks(compiled, backend=BACKEND)
    assert names == list(compilable_blocks(model, COMPILABLE_PARTS))
    compiled_loss, compiled_grads = _loss_and_grads(compiled, batch)
    assert counters["stats"]["unique_graphs"] > 0  # dynamo really captured graphs (not silently eager)
    # Identical blocks share a graph: fewer graphs than compiled blocks.
    assert counters["stats"]["unique_graphs"] < len(names)
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-6)
    assert compiled_grads.keys() == eager_grads.keys() and any(k.endswith("_gate") for k in eager_grads)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # In-place compilation keeps the parameter names: checkpoints and save_pretrained are unchanged.
    assert list(compiled.state_dict()) == list(model.state_dict())


def test_compiled_model_generates_the_same_tokens(open_model, images):
    model, processor = open_model
    model.eval()
    inputs = processor(["<image>Findings:"] * 2, [[images[2]], [images[3]]])
    expected = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8)
    compiled = copy.deepcopy(model)
    compile_blocks(compiled, parts=["resampler", "cross_attention", "lm_layers"], backend=BACKEND)
    assert torch.equal(compiled.generate(**inputs, max_new_tokens=8, min_new_tokens=8), expected)


def test_trainer_compiles_the_blocks_when_asked(tmp_path, monkeypatch):
    from trainers import make_trainer

    calls = []

    def spy(model, parts=COMPILABLE_PARTS, **options):
        calls.append(options)
        return compile_blocks(model, parts, backend=BACKEND)

    monkeypatch.setattr(compile_module, "compile_blocks", spy)
    trainer = make_trainer(tmp_path, max_steps=3, compile=True)
    assert len(calls) == 1
    perceiver = trainer.unwrapped.flamingo.perceiver
    assert perceiver._compiled_call_impl is not None  # nn.Module.compile ran in place
    summary = trainer.fit()
    assert all(torch.isfinite(torch.tensor(v)) for v in summary["val_losses"])
    assert not make_trainer(tmp_path / "eager", max_steps=1).unwrapped.flamingo.perceiver._compiled_call_impl
