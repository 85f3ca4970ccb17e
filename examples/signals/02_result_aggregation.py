"""Demo 02: statistics, outliers, batch comparison and a summary report over a batch.

Two batches of captures are measured with ``shoal.run``: a baseline and a new
batch in which two captures have an abnormal amplitude and one is corrupt.
The aggregation functions take the ``BatchReport`` directly: failed items are
left out of the statistics and counted in the quality figures, and every
outlier names the file it came from.

Run: python examples/signals/02_result_aggregation.py [--files 20]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from _signals import files_argument, make_signal_files, measure

import shoal
from shoal.aggregate import (
    compare,
    describe,
    outliers_iqr,
    outliers_zscore,
    quality,
    summary_report,
)


def main() -> None:
    args = files_argument(__doc__.splitlines()[0])
    n = args.files
    with tempfile.TemporaryDirectory() as tmp:
        base_dir, new_dir = Path(tmp, "baseline"), Path(tmp, "new")
        base_dir.mkdir()
        new_dir.mkdir()
        baseline = shoal.run(measure, make_signal_files(base_dir, n, seed=1), backend="threads")
        planted = {1: 3.2, n - 1: 0.6}  # a clipped-high and a weak capture
        batch = shoal.run(measure, make_signal_files(new_dir, n, seed=2, amplitudes=planted,
                                                     corrupt=[n // 2]), backend="threads")

    print("=== Descriptive statistics (new batch, amplitude in V) ===")
    stats = describe(batch, field="amplitude")
    print(f"count {stats.count}, mean {stats.mean:.4f}, std {stats.std:.4f}, "
          f"median {stats.median:.4f}, quartiles {stats.q25:.4f} .. {stats.q75:.4f}, "
          f"min {stats.min:.4f}, max {stats.max:.4f}")

    print("\n=== Outliers ===")
    for o in outliers_iqr(batch, field="amplitude"):
        print(f"IQR outlier: {o.item.name} amplitude {o.value:.4f} V "
              f"({o.score:+.1f} IQR beyond the quartiles)")
    z_outliers = outliers_zscore(batch, field="amplitude", threshold=2.5)
    for o in z_outliers:
        print(f"Z-score outlier: {o.item.name} amplitude {o.value:.4f} V (z = {o.score:+.2f})")
    if not z_outliers:  # with n values no |z| exceeds (n - 1) / sqrt(n): few files, weak test
        print(f"Z-score outliers (|z| > 2.5): none among {stats.count} values; IQR is the "
              "robust choice for small batches")

    print("\n=== Quality ===")
    q = quality(batch)
    print(f"success rate {q.success_rate:.1%}, error rate {q.error_rate:.1%}, "
          f"errors by type {q.errors_by_type}")
    for failure in batch.failures:
        print(f"Failed: {failure.item.name}: {failure.error}")

    print("\n=== Baseline vs new batch ===")
    comparison = compare(baseline, batch, fields=["amplitude", "rms", "frequency", "snr_db"])
    print(comparison)
    changed = comparison.changed(tolerance_pct=1.0)
    print(f"Fields whose mean moved more than 1%: {', '.join(changed) or 'none'}")

    print()
    print(summary_report(batch, field="amplitude"))


if __name__ == "__main__":
    main()
