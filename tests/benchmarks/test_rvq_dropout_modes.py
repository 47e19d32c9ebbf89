"""benchmarks/rvq_dropout_modes.py: under quantizer dropout, the official masking (every stage learns
from every frame) makes every added codebook count; the old masking starves the later stages."""

from __future__ import annotations

import warnings

from benchmark_scripts import load_benchmark


def test_official_masking_keeps_later_codebooks_learning():
    bench = load_benchmark("rvq_dropout_modes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # dead-code churn of the tiny run
        official = bench.run(0, "mask_sum", 40, [40])[40]
        old = bench.run(0, "mask_residual", 40, [40])[40]
    errors = [official[n] for n in bench.COUNTS]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.9 * errors[-2]  # 16 beats 8 clearly
    assert official[16] < 0.8 * old[16]
    assert abs(official[1] - old[1]) < 0.02  # the first stage, used by every example, is the same
