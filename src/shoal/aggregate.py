"""Result aggregation: statistics, outliers, comparisons and export.

Every function takes a ``BatchReport``, a list of ``ItemResult`` or a plain
list of values (numbers, or dicts with ``field=`` naming a numeric field)::

    from shoal import aggregate
    report = shoal.run(measure, files)
    print(aggregate.describe(report, field="amplitude"))
    for o in aggregate.outliers_iqr(report, field="amplitude"):
        print(o.index, o.item, o.value)
    print(aggregate.summary_report(report, field="amplitude"))
    aggregate.to_csv(report, "results.csv")
"""

from __future__ import annotations

from shoal._aggregate import (
    Comparison,
    FieldComparison,
    Outlier,
    Quality,
    Stats,
    compare,
    describe,
    describe_fields,
    outliers_iqr,
    outliers_zscore,
    quality,
    summary_report,
    to_csv,
    to_dataframe,
    to_jsonl,
)

__all__ = [
    "Comparison",
    "FieldComparison",
    "Outlier",
    "Quality",
    "Stats",
    "compare",
    "describe",
    "describe_fields",
    "outliers_iqr",
    "outliers_zscore",
    "quality",
    "summary_report",
    "to_csv",
    "to_dataframe",
    "to_jsonl",
]
