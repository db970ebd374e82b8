"""One string names a data source, so the CLI, the notebooks and papermill parameters share it.

==========================================  ==============================================
spec                                        source
==========================================  ==============================================
``phantom`` / ``phantom:iu``                 :class:`PhantomCXR`, real IU report text
``phantom:templated``                       :class:`PhantomCXR`, templated text (no download)
``phantom:longitudinal``                    :class:`LongitudinalPhantomCXR`: 1-4 studies per patient,
                                            comparison reports, ``prior`` set (no download)
``mimic:ROOT`` or ``mimic:ROOT,REPORTS``    :class:`MimicCXR` (MIMIC-CXR-JPG; reports root)
``iu:XML_DIR,IMAGE_DIR``                    :class:`IUXray` (the raw Open-i release)
``r2gen:ANNOTATION_JSON,IMAGE_ROOT``        :class:`R2GenAnnotation` (IU X-Ray or MIMIC-CXR)
``chex:ANNOTATION_JSON[,IMAGE_ROOT]``       :class:`ChexDataset`; ``{split}`` in the path is
                                            replaced by the split name
==========================================  ==============================================

``r2gen`` and ``chex`` specs may end in ``;licence=open`` or ``;licence=credentialed``: files of an
origin the loader cannot tell are private otherwise (:mod:`flamingo_lib.data.licence`).

``phantom`` specs may end in ``;views=PA+LATERAL`` (default ``;views=PA``): a lateral film beside each
frontal one (:mod:`flamingo_lib.data.phantom.lateral`).

``mimic`` specs may end in ``;priors=true`` (or ``;priors=false``, the default): each sample then
carries the subject's most recent earlier study as ``sample.prior`` (:class:`MimicCXR`'s ``priors``).
Without the option the dataset is opened exactly as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

KINDS = ("phantom", "mimic", "iu", "r2gen", "chex")


def open_source(spec: str, split: str, image_size: int | None = 224, max_samples: int | None = None,
                on_error: str = "raise", seed: int = 0) -> Sequence[Any]:
    """The ``split`` ("train" | "val" | "test") of the data source named by ``spec``.

    Raises:
        ValueError: an unknown kind, the wrong number of paths for the kind, or an unknown option.
    """
    body, _, option_text = spec.partition(";")
    kind, _, rest = body.partition(":")
    paths = [p for p in rest.split(",") if p] if rest else []
    if kind not in KINDS:
        raise ValueError(f"unknown data source {spec!r}; kinds: {', '.join(KINDS)} (see flamingo_lib.data.sources)")
    options = _options(spec, kind, option_text)
    licence = options.get("licence")
    views = {"views": options["views"]} if "views" in options else {}
    if kind == "phantom" and rest == "longitudinal":
        from flamingo_lib.data.phantom.longitudinal import LongitudinalPhantomCXR

        return LongitudinalPhantomCXR(split=split, image_size=image_size or 224, seed=seed, max_samples=max_samples,
                                      **views)
    if kind == "phantom":
        from flamingo_lib.data.phantom.dataset import PhantomCXR

        text = rest or "iu"
        return PhantomCXR(split=split, image_size=image_size or 224, text=text, seed=seed, max_samples=max_samples,
                          **views)
    needed = {"mimic": (1, 2), "iu": (2, 2), "r2gen": (2, 2), "chex": (1, 2)}[kind]
    if not needed[0] <= len(paths) <= needed[1]:
        raise ValueError(f"data source {spec!r}: {kind} takes {needed[0]}-{needed[1]} comma-separated paths, "
                         f"got {len(paths)}")
    common = {"on_error": on_error, "image_size": image_size}
    if kind == "mimic":
        from flamingo_lib.data.datasets.mimic import MimicCXR

        # Passed only when given, so a spec without it opens the dataset with MimicCXR's own default.
        priors = {"priors": options["priors"]} if "priors" in options else {}
        dataset = MimicCXR(paths[0], split=split, reports_root=paths[1] if len(paths) > 1 else None, **priors,
                           **common)  # fmt: skip
    elif kind == "iu":
        from flamingo_lib.data.datasets.iu_xray import IUXray

        dataset = IUXray(paths[0], paths[1], split=split, **common)
    elif kind == "r2gen":
        from flamingo_lib.data.datasets.iu_xray import R2GenAnnotation

        dataset = R2GenAnnotation(paths[0], paths[1], split=split, licence=licence, **common)
    else:
        from flamingo_lib.data.datasets.chex import ChexDataset

        dataset = ChexDataset(paths[0].replace("{split}", split), paths[1] if len(paths) > 1 else None,
                              licence=licence, **common)
    return dataset if max_samples is None else Head(dataset, max_samples)


# The options each kind takes after ';', as the error for an unknown one lists them.
_KIND_OPTIONS = {"r2gen": "licence=open|credentialed", "chex": "licence=open|credentialed",
                 "mimic": "priors=true|false", "phantom": "views=PA or views=PA+LATERAL"}  # fmt: skip
_BOOLEANS = {"true": True, "false": False}


def training_source(spec: str) -> str:
    """``spec`` as a run's training key records it: without a declared licence (who may see the data is
    not what a model learns from them), with every other option (priors, views)."""
    body, _, option_text = spec.partition(";")
    kept = [t for t in option_text.split(";") if t.strip() and t.partition("=")[0].strip() not in ("licence", "license")]
    return ";".join([body, *kept])


def _options(spec: str, kind: str, option_text: str) -> dict[str, Any]:
    """The options a spec declares after ``;`` (``;``-separated ``name=value``), checked for ``kind``:
    ``{"licence": str}`` (r2gen, chex), ``{"priors": bool}`` (mimic) and ``{"views": tuple}`` (phantom);
    empty when it declares none.

    Raises:
        ValueError: an unknown or repeated option, a bad value, an option the kind does not take, or
            a licence declared for a source whose licence is known.
    """
    options: dict[str, Any] = {}
    for text in option_text.split(";") if option_text else ():
        name, equals, value = (part.strip() for part in text.partition("="))
        name = "licence" if name == "license" else name
        if name == "licence" and equals:
            if kind not in ("r2gen", "chex"):
                raise ValueError(f"data source {spec!r}: {kind} data have a known licence; only r2gen and chex files, "
                                 "whose origin the loader may not know, take a licence")
            from flamingo_lib.data.licence import check_licence

            check_licence(value)
            parsed: Any = value
        elif name == "priors" and equals and kind == "mimic":
            if value.lower() not in _BOOLEANS:
                raise ValueError(f"data source {spec!r}: priors must be true or false, got {value!r}")
            parsed = _BOOLEANS[value.lower()]
        elif name == "views" and equals and kind == "phantom":
            from flamingo_lib.data.phantom.render import VIEWS

            parsed = tuple(v.strip().upper() for v in value.split("+"))
            if not parsed or any(v not in VIEWS for v in parsed) or len(set(parsed)) != len(parsed):
                raise ValueError(f"data source {spec!r}: views are {' or '.join(VIEWS)} joined by '+', got {value!r}")
        elif kind in _KIND_OPTIONS:
            raise ValueError(f"data source {spec!r}: the only option after ';' is {_KIND_OPTIONS[kind]}, got {text!r}")
        else:
            raise ValueError(f"data source {spec!r}: {kind} takes no option after ';', got {text!r}")
        if name in options:
            raise ValueError(f"data source {spec!r}: option {name!r} given twice")
        options[name] = parsed
    return options


class Head:
    """The first ``n`` samples of a dataset, loaded lazily like the dataset itself."""

    def __init__(self, dataset: Sequence[Any], n: int) -> None:
        self.dataset, self.n = dataset, min(n, len(dataset))

    def __len__(self) -> int:
        return self.n

    @property
    def reports(self) -> list[str]:
        """The first ``n`` reports, from the dataset's index when it has one (:mod:`flamingo_lib.data.study_index`)."""
        from flamingo_lib.data.study_index import study_reports

        return study_reports(self.dataset)[: self.n] if hasattr(self.dataset, "reports") else \
            [self[i].report for i in range(self.n)]

    @property
    def image_counts(self) -> list[int]:
        """How many films each of the first ``n`` studies has."""
        from flamingo_lib.data.study_index import image_counts

        return image_counts(self.dataset)[: self.n] if hasattr(self.dataset, "image_counts") else \
            [len(self[i].images) for i in range(self.n)]

    def __getitem__(self, index: int) -> Any:
        if not -self.n <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} samples")
        return self.dataset[index % self.n]
