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


def _memory_step(frozen_dtype: str, seconds: float, peak_gib: float, param_gib: float) -> dict:
    gib = 2**30
    return {"frozen_dtype": frozen_dtype, "batch": 16, "step_time": {"median": seconds, "min": seconds, "max": seconds, "n": 5},
            "step_gflop": {"total": 98_900.0}, "step_tflops_achieved": 98.9 / seconds, "first_step_s": 2 * seconds,
            "cuda_peak_step_bytes": peak_gib * gib, "param_bytes": param_gib * gib, "frozen_param_bytes": param_gib / 2 * gib,
            "machine": {"gpu": "NVIDIA H200"}}


def test_the_frozen_bfloat16_step_is_reported_beside_the_float32_one_with_its_own_mfu_target() -> None:
    from bench.report import _frozen_half, targets

    full, half = _memory_step("float32", 0.4, 8.0, 2.6), _memory_step("bfloat16", 0.1, 6.0, 1.8)
    rows = {t["target"]: t for t in targets({"machine": {"device": "cuda"}, "memory": full, "memory_frozen_bf16": half})}
    plain = "training step MFU at biomed sizes, batch 16"
    assert set(rows) == {plain, plain + ", frozen LM and ViT in bfloat16"}
    # 98.9 TFLOP in 0.4 s and in 0.1 s on a 989 TFLOP/s card; only the second meets 35%
    half_row = rows[plain + ", frozen LM and ViT in bfloat16"]
    assert (rows[plain]["measured"], rows[plain]["met"]) == ("25.0%", False)
    assert (half_row["measured"], half_row["met"]) == ("100.0%", True)
    text = "\n".join(_frozen_half(full, half))
    assert "step runs **4.00x** as fast" in text and "peak memory 6.00 GiB instead of 8.00" in text
    assert "| step time (s) | 0.4 | 0.1 |" in text


def test_a_run_writes_its_results_after_every_section_and_names_the_unfinished_ones(tmp_path, monkeypatch) -> None:
    import json

    from bench import report, run

    def stop(*_args, **_kwargs):
        raise TimeoutError("the lent machine's time limit")

    monkeypatch.setattr(run, "run_memory", stop)  # the section after the feature cache never finishes
    with pytest.raises(TimeoutError):
        run.main(["--smoke", "--sections", "features,memory", "--no-frozen-half", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    assert "features" in results and "memory" not in results
    text = (tmp_path / "RESULTS.md").read_text()
    assert "## 3. Feature cache" in text and "stopped before section(s) memory finished" in text
    assert "Partial run" not in report.markdown({**results, "sections_requested": ["features"]})


def test_the_three_decoding_precisions_hold_the_dtypes_they_name_and_the_same_trained_weights(tmp_path) -> None:
    import torch

    from bench import precision
    from bench.models import SMOKE_BLOCKS, make_biogpt_size_lm_dir, make_vit_dir

    built = precision.models(make_biogpt_size_lm_dir(tmp_path / "lm", smoke=True), make_vit_dir(tmp_path / "vit", smoke=True),
                             **SMOKE_BLOCKS)
    assert list(built) == list(precision.PRECISIONS)
    dtypes = {name: ({p.dtype for p in m.parameters() if not p.requires_grad}, {p.dtype for p in m.parameters_trainable()})
              for name, m in built.items()}
    assert dtypes == {"float32": ({torch.float32}, {torch.float32}), "frozen_bf16": ({torch.bfloat16}, {torch.float32}),
                      "all_bf16": ({torch.bfloat16}, {torch.bfloat16})}
    reference = built["float32"].state_dict_trainable()
    assert all(float(reference[n]) == 1.0 for n in reference if n.endswith("gate"))
    for name in ("frozen_bf16", "all_bf16"):
        for key, value in built[name].state_dict_trainable().items():
            assert torch.equal(value, reference[key].to(value.dtype)), (name, key)
