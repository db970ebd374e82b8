"""The fused decoding step of the gated cross-attention blocks (``fuse_decode_steps``): the same
tokens and scores as the blocks' general forward, weights prepared once per ``generate`` call
from the parameters as they are then (a parameter update is seen by the next call), and the
per-step ops it exists to remove (gate ``tanh``, casts, the block's own attention dispatch)
gone from a decoding step."""

from __future__ import annotations

import collections

import pytest
import torch
from torch.profiler import profile

from conftest import open_gates, xray_like
from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor
from flamingo_lib.modeling.cross_attention import GatedCrossAttentionBlock
from flamingo_lib.modeling.lm_injection import lm_flamingo_layers

PROMPT = "<image>Frontal<image>Lateral Findings:"


def open_model(only_immediate: bool = True, **overrides) -> tuple[FlamingoModel, FlamingoProcessor]:
    config = FlamingoConfig.from_preset("tiny-random", only_attend_immediate_media=only_immediate, **overrides)
    model = FlamingoModel(config).eval()
    open_gates(model)
    return model, FlamingoProcessor(config)


def two_studies(processor: FlamingoProcessor) -> dict[str, torch.Tensor]:
    """Two studies of two films, one prompt longer (left padding in the batch)."""
    images = [[xray_like(0), xray_like(1)], [xray_like(2), xray_like(3)]]
    return processor([PROMPT, "Old films." + PROMPT], images, padding_side="left")


def greedy(model: FlamingoModel, batch: dict[str, torch.Tensor], fused: bool, new: int = 8):
    model.fuse_decode_steps = fused
    try:
        return model.generate(**batch, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                              output_scores=True, return_dict_in_generate=True)
    finally:
        model.fuse_decode_steps = True


def assert_same_decoding(a, b, atol: float = 1e-5) -> None:
    assert torch.equal(a.sequences, b.sequences)
    for x, y in zip(a.scores, b.scores, strict=True):
        allowed = x.isfinite()
        assert torch.equal(allowed, y.isfinite())
        torch.testing.assert_close(x[allowed], y[allowed], atol=atol, rtol=0)


def count_calls(monkeypatch, name: str) -> list[int]:
    calls: list[int] = []
    real = getattr(GatedCrossAttentionBlock, name)

    def counting(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(GatedCrossAttentionBlock, name, counting)
    return calls


@pytest.mark.parametrize("only_immediate", [True, False])
def test_fused_steps_decode_the_tokens_and_scores_of_the_general_forward(monkeypatch, only_immediate):
    model, processor = open_model(only_immediate)
    batch = two_studies(processor)
    unfused = greedy(model, batch, fused=False)
    steps = count_calls(monkeypatch, "decode_step")
    fused = greedy(model, batch, fused=True)
    layers = len(lm_flamingo_layers(model.flamingo.lm))
    assert len(steps) == (8 - 1) * layers  # every step after the prefill, in every block
    assert_same_decoding(fused, unfused)


def test_greedy_tokens_of_tiny_random_are_unchanged_with_shut_gates(tiny):
    # the preset as built: gates at 0, the blocks add exactly nothing, fused or not
    model, processor = tiny
    batch = two_studies(processor)
    assert_same_decoding(greedy(model, batch, fused=True), greedy(model, batch, fused=False), atol=0)


def test_weights_are_prepared_once_per_call_and_dropped_after_it(monkeypatch):
    model, processor = open_model()
    batch = two_studies(processor)
    built = count_calls(monkeypatch, "decode_weights")
    greedy(model, batch, fused=True)
    layers = lm_flamingo_layers(model.flamingo.lm)
    assert len(built) == len(layers)
    assert all(layer.conditioning.decode is None and layer.conditioning.media_kv is None for layer in layers)
    greedy(model, batch, fused=True)
    assert len(built) == 2 * len(layers)  # a new call prepares them again


def test_a_parameter_update_between_calls_reaches_the_fused_steps():
    model, processor = open_model()
    batch = two_studies(processor)
    before = greedy(model, batch, fused=True)
    # a training step: an optimizer moves every trainable parameter in place, the gates included
    model.train()
    loss = model(**processor.training_batch(["Heart size normal."] * 2, [[xray_like(0), xray_like(1)]] * 2,
                                            prompts=PROMPT)).loss
    loss.backward()
    optimizer = torch.optim.SGD(model.parameters_trainable(), lr=5.0)
    optimizer.step()
    model.eval()
    after = greedy(model, batch, fused=True)
    assert not all(torch.allclose(x, y) for x, y in zip(before.scores, after.scores))  # the update shows
    assert_same_decoding(after, greedy(model, batch, fused=False))


def test_shut_then_opened_gates_between_calls_are_seen():
    config = FlamingoConfig.from_preset("tiny-random")
    model, processor = FlamingoModel(config).eval(), FlamingoProcessor(config)
    batch = two_studies(processor)
    greedy(model, batch, fused=True)  # prepared with tanh(0) = 0: the blocks add nothing
    open_gates(model)
    assert_same_decoding(greedy(model, batch, fused=True), greedy(model, batch, fused=False))


def test_keep_attention_and_gradients_take_the_general_forward(monkeypatch):
    model, processor = open_model()
    batch = two_studies(processor)
    steps = count_calls(monkeypatch, "decode_step")
    layers = lm_flamingo_layers(model.flamingo.lm)
    for layer in layers:
        layer.gated_cross_attn.attn.keep_attention = True
    try:
        greedy(model, batch, fused=True)
        assert steps == []
        # the general forward kept the last step's weights (B, H, 1, T * n) for the evidence maps
        attention = layers[0].gated_cross_attn.attn.last_attention
        assert attention is not None and attention.shape[2] == 1
    finally:
        for layer in layers:
            layer.gated_cross_attn.attn.keep_attention = False
    # a step taken with gradients on (training, not generate's no_grad) runs the general forward
    # even with the media keys/values kept and no masks, and the gates get their gradients
    flamingo = model.flamingo
    features = torch.randn(2, 2, model.config.resampler_num_latents, model.config.dim_visual)
    flamingo.condition(features, None, reuse_media_kv=True, all_media_seen=True)
    try:
        logits = flamingo.lm(input_ids=batch["input_ids"][:, -1:]).logits
    finally:
        flamingo.condition(None, None)
    logits.sum().backward()
    assert steps == []
    assert layers[0].gated_cross_attn.attn_gate.grad is not None


def assert_close_until_tokens_differ(a, b, atol: float, rtol: float) -> None:
    """Scores equal within tolerance at every step whose prefix both runs share (in bfloat16 a
    near tie may pick another token, after which the runs score different text)."""
    prompt = a.sequences.shape[1] - len(a.scores)
    for step, (x, y) in enumerate(zip(a.scores, b.scores, strict=True)):
        allowed = x.isfinite()
        torch.testing.assert_close(x[allowed].float(), y[allowed].float(), atol=atol, rtol=rtol)
        if not torch.equal(a.sequences[:, prompt + step], b.sequences[:, prompt + step]):
            return


def test_a_bfloat16_model_and_autocast_decode_as_the_general_forward():
    model, processor = open_model()
    batch = two_studies(processor)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused, unfused = greedy(model, batch, fused=True), greedy(model, batch, fused=False)
    assert fused.scores[1].dtype == unfused.scores[1].dtype
    assert_close_until_tokens_differ(fused, unfused, atol=0.05, rtol=0.02)
    half = model.to(torch.bfloat16)
    assert lm_flamingo_layers(half.flamingo.lm)[0].gated_cross_attn.attn_gate.dtype == torch.bfloat16
    fused, unfused = greedy(half, batch, fused=True), greedy(half, batch, fused=False)
    assert_close_until_tokens_differ(fused, unfused, atol=0.05, rtol=0.02)


def steady_ops(model: FlamingoModel, batch: dict[str, torch.Tensor], fused: bool) -> collections.Counter:
    """Op calls by name per decoding step: a 6-token generate less a 2-token one, over 4."""
    counts = {}
    for n in (2, 6):
        with profile() as prof:
            greedy(model, batch, fused, new=n)
        counts[n] = collections.Counter(e.key for e in prof.key_averages() for _ in range(e.count))
    counts[6].subtract(counts[2])
    return collections.Counter({k: v // 4 for k, v in counts[6].items() if v})


def test_a_fused_step_computes_no_gate_tanh_cast_or_block_attention_dispatch():
    model, processor = open_model()
    batch = two_studies(processor)
    layers = len(lm_flamingo_layers(model.flamingo.lm))
    fused, unfused = steady_ops(model, batch, True), steady_ops(model, batch, False)
    assert unfused["aten::tanh"] == 2 * layers and fused["aten::tanh"] == 0  # gates folded into the weights
    # only the LM's own self-attention dispatches scaled_dot_product_attention
    assert unfused["aten::scaled_dot_product_attention"] == 2 * layers
    assert fused["aten::scaled_dot_product_attention"] == layers
    assert fused["aten::t"] < unfused["aten::t"]  # weights transposed once per call, not per linear
    assert fused["aten::_to_copy"] == unfused["aten::_to_copy"]  # no cast added anywhere
    assert sum(fused.values()) < sum(unfused.values())
