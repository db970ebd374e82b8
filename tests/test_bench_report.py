"""bench.report: the media K/V caching ceiling and how RESULTS.md reports a target it caps."""

from __future__ import annotations

import pytest

from bench.report import KV_CACHE_TARGET, _generation, kv_cache_ceiling


def _row(bare: float, ours: float, recompute: float, case: str = "toy") -> dict:
    rate = lambda v: {"median": v, "min": v, "max": v, "n": 1}  # noqa: E731
    return {"case": case, "batch": 1, "prompt_tokens": 4, "new_tokens": 8, "note": "toy sizes",
            "tokens_per_s": {"bare_lm": rate(bare), "flamingo": rate(ours), "flamingo_recompute_kv": rate(recompute)},
            "gflop_per_step": {"bare_lm": 1.0, "flamingo": 1.5, "flamingo_recompute_kv": 2.0},
            "bound_tokens_per_s": bare / 1.5, "frac_of_bound": ours / (bare / 1.5),
            "speedup_vs_recompute_kv": ours / recompute, "same_tokens_cached_vs_recomputed": True}


def test_ceiling_adds_the_recompute_extra_to_the_bare_step() -> None:
    # bare 1 ms, ours 2 ms, recompute 2.5 ms: free cross-attention would leave 1 ms vs 1.5 ms
    assert kv_cache_ceiling(_row(1000.0, 500.0, 400.0)) == pytest.approx(1.5)
    # a decode whose cross-attention already costs nothing is at its ceiling
    assert kv_cache_ceiling(_row(1000.0, 1000.0, 400.0)) == pytest.approx(2.5)


def test_ceiling_bounds_the_measured_speedup_when_ours_is_slower_than_the_bare_lm() -> None:
    for ours, recompute in ((900.0, 800.0), (600.0, 550.0), (300.0, 100.0)):
        row = _row(1000.0, ours, recompute)
        assert kv_cache_ceiling(row) >= row["speedup_vs_recompute_kv"]


def test_results_name_the_rows_the_ceiling_caps_and_only_those() -> None:
    capped = _row(1000.0, 630.0, 570.0, case="tiny")  # recompute adds 0.17 ms to a 1 ms bare step
    free = _row(10.0, 6.0, 4.0, case="big")
    assert kv_cache_ceiling(capped) < KV_CACHE_TARGET <= kv_cache_ceiling(free)
    text = "\n".join(_generation([capped, free]))
    note = next(line for line in text.splitlines() if line.startswith("Where the ceiling"))
    assert f"tiny batch 1: {kv_cache_ceiling(capped):.2f}x" in note and "big" not in note
    assert "\n".join(_generation([free])).count("Where the ceiling") == 0
