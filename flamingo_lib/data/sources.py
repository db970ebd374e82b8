"""One string names a data source, so the CLI, the notebooks and papermill parameters share it.

==========================================  ==============================================
spec                                        source
==========================================  ==============================================
``phantom`` / ``phantom:iu``                 :class:`PhantomCXR`, real IU report text
``phantom:templated``                       :class:`PhantomCXR`, templated text (no download)
``mimic:ROOT`` or ``mimic:ROOT,REPORTS``    :class:`MimicCXR` (MIMIC-CXR-JPG; reports root)
``iu:XML_DIR,IMAGE_DIR``                    :class:`IUXray` (the raw Open-i release)
``r2gen:ANNOTATION_JSON,IMAGE_ROOT``        :class:`R2GenAnnotation` (IU X-Ray or MIMIC-CXR)
``chex:ANNOTATION_JSON[,IMAGE_ROOT]``       :class:`ChexDataset`; ``{split}`` in the path is
                                            replaced by the split name
==========================================  ==============================================

``r2gen`` and ``chex`` specs may end in ``;licence=open`` or ``;licence=credentialed``: files of an
origin the loader cannot tell are private otherwise (:mod:`flamingo_lib.data.licence`).
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
    licence = _licence_option(spec, kind, option_text)
    if kind == "phantom":
        from flamingo_lib.data.phantom.dataset import PhantomCXR

        text = rest or "iu"
        return PhantomCXR(split=split, image_size=image_size or 224, text=text, seed=seed, max_samples=max_samples)
    needed = {"mimic": (1, 2), "iu": (2, 2), "r2gen": (2, 2), "chex": (1, 2)}[kind]
    if not needed[0] <= len(paths) <= needed[1]:
        raise ValueError(f"data source {spec!r}: {kind} takes {needed[0]}-{needed[1]} comma-separated paths, "
                         f"got {len(paths)}")
    common = {"on_error": on_error, "image_size": image_size}
    if kind == "mimic":
        from flamingo_lib.data.datasets.mimic import MimicCXR

        dataset = MimicCXR(paths[0], split=split, reports_root=paths[1] if len(paths) > 1 else None, **common)
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


def _licence_option(spec: str, kind: str, option_text: str) -> str | None:
    """The ``licence`` a spec declares after ``;`` (None when it declares none).

    Raises:
        ValueError: another option, a bad value, or a licence declared for a source whose licence is known.
    """
    if not option_text:
        return None
    name, equals, value = option_text.partition("=")
    if name.strip() not in ("licence", "license") or not equals:
        raise ValueError(f"data source {spec!r}: the only option after ';' is licence=open|credentialed, "
                         f"got {option_text!r}")
    if kind not in ("r2gen", "chex"):
        raise ValueError(f"data source {spec!r}: {kind} data have a known licence; only r2gen and chex files, whose "
                         "origin the loader may not know, take a licence")
    from flamingo_lib.data.licence import check_licence

    check_licence(value.strip())
    return value.strip()


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
