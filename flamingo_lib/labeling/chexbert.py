"""The CheXbert backend of :func:`flamingo_lib.labeling.labeler.label_reports`, through ``f1chexbert``.

Used only when that package and its weights are already installed locally: nothing is ever
downloaded (the hub is unreachable where this project runs), and what is missing is named.
"""

from __future__ import annotations

import importlib
import os

from flamingo_lib.data.sample import CHEXPERT_OBSERVATIONS, Label

#: Where f1chexbert fetches its weights from (we only ever read them from the local cache).
CHEXBERT_WEIGHTS = ("StanfordAIMI/RRG_scorers", "chexbert.pth")
#: The tokenizer/encoder f1chexbert builds CheXbert on.
CHEXBERT_ENCODER = ("bert-base-uncased", "config.json")


def chexbert_labeler() -> object:
    """Build f1chexbert's labeler from local files only, or say exactly what is missing."""
    try:
        module = importlib.import_module("f1chexbert")
    except ImportError as err:
        raise RuntimeError(
            "backend='chexbert' needs the f1chexbert package, which is not importable here "
            f"({err}); install it and place its weights in the Hugging Face cache, or use "
            "backend='rules'."
        ) from err
    from huggingface_hub import try_to_load_from_cache

    missing = [
        f"{repo}/{name}"
        for repo, name in (CHEXBERT_WEIGHTS, CHEXBERT_ENCODER)
        if not isinstance(try_to_load_from_cache(repo, name), str)
    ]
    if missing:
        raise RuntimeError(
            "backend='chexbert' found f1chexbert but not its weights in the local Hugging Face "
            f"cache: missing {', '.join(missing)}. We never download them; fetch them "
            "beforehand or use backend='rules'."
        )
    # The weights are local: forbid any network call while the package loads them.
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        return module.F1CheXbert(device="cpu")
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


def chexbert_label(model: object, text: str) -> dict[str, Label]:
    """One report's labels from f1chexbert's classifier, mapped onto our observation order."""
    out = model.get_label(text, mode="classification")  # type: ignore[attr-defined]
    # Releases differ: some return the labels alone, some (labels, embeddings).
    values = out[0] if isinstance(out, tuple) else out
    names = list(getattr(model, "target_names"))
    by_name = {n: (None if v == "" else float(v)) for n, v in zip(names, values, strict=True)}
    return {obs: by_name.get(obs) for obs in CHEXPERT_OBSERVATIONS}
