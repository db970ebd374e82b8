"""Static-cache decoding: ``generate(..., cache_implementation="static")`` gives the tokens and scores of
the dynamic cache, and a compiled decoding step is one graph for every step of every call."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters
from transformers import CompileConfig

from conftest import open_gates, xray_like
from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor
from flamingo_lib.modeling.generation import STATIC_PAD_MULTIPLE


@pytest.fixture(scope="module")
def open_model() -> tuple[FlamingoModel, FlamingoProcessor]:
    config = FlamingoConfig.from_preset("tiny-random", findings_head=["Pleural Effusion"], findings_tokens=True)
    model = FlamingoModel(config).eval()
    open_gates(model, value=2.0, seed=3)
    return model, FlamingoProcessor(config)


def prompts(processor, texts=("<image>Findings:", "Old films. <image><image>Findings:")):
    images = [[xray_like(i + j) for j in range(t.count("<image>"))] for i, t in enumerate(texts)]
    return processor(list(texts), images, padding_side="left")


def compile_config(backend: str = "eager") -> CompileConfig:
    config = CompileConfig(backend=backend, mode=None, fullgraph=True, dynamic=False)
    config._compile_all_devices = True  # transformers compiles the step by itself on CUDA only
    return config


@pytest.mark.parametrize("num_beams", [1, 3])
def test_the_static_cache_decodes_the_tokens_and_scores_of_the_dynamic_cache(open_model, num_beams):
    model, processor = open_model
    batch = prompts(processor)
    assert batch["input_ids"].shape[1] % STATIC_PAD_MULTIPLE  # the static path pads the prompt
    kwargs = dict(max_new_tokens=7, min_new_tokens=7, do_sample=False, num_beams=num_beams,
                  output_scores=True, return_dict_in_generate=True)
    dynamic = model.generate(**batch, **kwargs)
    static = model.generate(**batch, cache_implementation="static", **kwargs)
    assert torch.equal(static.sequences, dynamic.sequences)  # the added padding is taken off again
    for a, b in zip(static.scores, dynamic.scores):
        finite = a.isfinite()
        assert torch.equal(finite, b.isfinite())
        torch.testing.assert_close(a[finite], b[finite], atol=1e-5, rtol=0)


def test_a_compiled_static_step_is_one_graph_for_every_step_and_every_call_of_one_shape(open_model):
    model, processor = open_model
    batch = prompts(processor)
    eager = model.generate(**batch, max_new_tokens=9, min_new_tokens=9, do_sample=False)
    torch._dynamo.reset()
    counters.clear()
    compiled = model.generate(**batch, max_new_tokens=9, min_new_tokens=9, do_sample=False,
                              cache_implementation="static", compile_config=compile_config())
    assert torch.equal(compiled, eager)
    assert counters["stats"]["unique_graphs"] == 1  # eight decoding steps, one graph
    assert not counters["graph_break"]
    counters.clear()  # another prompt that pads to the same length: nothing is compiled again
    other = prompts(processor, ("<image>Findings: the", "Old films. <image><image>Findings:"))
    padded = [-(-b["input_ids"].shape[1] // STATIC_PAD_MULTIPLE) for b in (batch, other)]
    assert padded[0] == padded[1] and not torch.equal(other["input_ids"], batch["input_ids"])
    model.generate(**other, max_new_tokens=9, min_new_tokens=9, do_sample=False, cache_implementation="static",
                   compile_config=compile_config())
    assert counters["stats"].get("unique_graphs", 0) == 0
    del model._compiled_call  # the next tests decode eagerly


def test_static_decoding_refuses_what_it_cannot_size_or_place(open_model):
    model, processor = open_model
    batch = prompts(processor)
    with pytest.raises(ValueError, match="needs max_new_tokens"):
        model.generate(**batch, max_length=40, cache_implementation="static")
    right = processor(["<image>Findings:", "Old films. <image>Findings:"], [[xray_like(0)], [xray_like(1)]])
    with pytest.raises(ValueError, match="left-padded prompts"):
        model.generate(**right, max_new_tokens=4, cache_implementation="static")
