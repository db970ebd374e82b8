"""What a dataset's index tells without decoding a film: each study's report text and how many
films it has; and a stream of the films themselves, decoded by worker processes.

At MIMIC-CXR's size (~220k training studies; a full-size JPEG takes ~60 ms to decode) a pass that
decodes every film only to read the reports costs hours, and a list of every decoded film costs
gigabytes. The datasets of :mod:`flamingo_lib.data` therefore answer ``reports`` and
``image_counts`` from their index (report files or annotation JSON, never an image), and the image
passes (feature caching, the nearest-neighbour baseline) go through :func:`iter_films`: one study
at a time, in bounded memory, decoded by a ``DataLoader``'s workers when asked.

A dataset without these attributes (a list of samples in memory) is read sample by sample.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

__all__ = ["study_reports", "image_counts", "iter_films", "iter_samples"]


def study_reports(dataset: Sequence[Any]) -> list[str]:
    """The report text of every study, in index order, decoding no film when ``dataset`` has an index
    (its ``reports``)."""
    reports = getattr(dataset, "reports", None)
    if reports is not None:
        return list(reports)
    return [dataset[i].report for i in range(len(dataset))]


def image_counts(dataset: Sequence[Any]) -> list[int]:
    """How many films each study has, in index order (from the index when ``dataset`` has one:
    its ``image_counts``)."""
    counts = getattr(dataset, "image_counts", None)
    if counts is not None:
        return list(counts)
    return [len(dataset[i].images) for i in range(len(dataset))]


def _as_list(sample: list[Any]) -> Any:
    """The DataLoader's collate function for ``batch_size=1``: the one sample as it is (a
    module-level function: worker processes receive it by reference)."""
    return sample[0]


def iter_samples(dataset: Sequence[Any], num_workers: int = 0, prefetch: int = 4) -> Iterator[Any]:
    """Every sample of ``dataset`` in index order. With ``num_workers`` > 0 a ``DataLoader``'s worker
    processes decode them ahead of the caller (at most ``num_workers * prefetch`` in flight), so
    memory stays bounded however large the dataset.

    Args:
        dataset: a map-style dataset (``__len__``, ``__getitem__``).
        num_workers: decoding processes; 0 decodes in this process.
        prefetch: samples each worker decodes ahead.
    """
    if num_workers <= 0 or len(dataset) == 0:
        for index in range(len(dataset)):
            yield dataset[index]
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=num_workers, collate_fn=_as_list,
                        prefetch_factor=prefetch)
    yield from loader


def iter_films(datasets: Iterable[Sequence[Any]], num_workers: int = 0, first_view_only: bool = False,
               priors: bool = False) -> Iterator[Any]:
    """The films of every study of each dataset in turn (PIL images), streamed by :func:`iter_samples`.

    Args:
        first_view_only: each study's first film only (the nearest-neighbour baseline's descriptor).
        priors: also the films of each study's prior study (``sample.prior``), which a prompt with the
            prior reads: a prior outside the datasets (a truncated split) would otherwise be missing.
    """
    for dataset in datasets:
        for sample in iter_samples(dataset, num_workers):
            yield from sample.images[:1] if first_view_only else sample.images
            prior = getattr(sample, "prior", None) if priors else None
            if prior is not None:
                yield from prior.images
