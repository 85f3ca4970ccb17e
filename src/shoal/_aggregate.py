"""Statistics, outliers, quality and exports over the results of a batch.

``data`` is everywhere a ``BatchReport``, an iterable of ``ItemResult``, or of
plain values (value ``i`` counts as a success with index ``i`` and the value as
its item). Values are numbers, or dicts from which ``field=`` picks a number
("a.b" is key "b" of the dict under "a"; an exact key "a.b" wins). Failed items
are left out of statistics and outliers but counted in the rates. Pure Python;
pandas is imported only by ``to_dataframe``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import numbers
import os
import statistics
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, TypeAlias

from shoal._core.errors import BackendUnavailable, InvalidItemsError, InvalidOptionError
from shoal._core.results import BatchReport, ItemResult

if TYPE_CHECKING:
    import pandas as pd

Data: TypeAlias = "BatchReport[Any] | Iterable[Any]"
PathOrFile: TypeAlias = "str | os.PathLike[str] | IO[str]"
_NAN = math.nan
_MISSING = object()


# --- reading the input --------------------------------------------------------


def _results(data: Data) -> list[ItemResult[Any]]:
    """``data`` as ItemResults (raises InvalidItemsError for str, dict, non-iterable)."""
    if isinstance(data, BatchReport):
        return list(data.results)
    if isinstance(data, (str, bytes, Mapping)) or not isinstance(data, Iterable):
        raise InvalidItemsError(
            "data must be a BatchReport, a list of ItemResult or a list of values, "
            f"got {type(data).__name__}"
        )
    return [
        r if isinstance(r, ItemResult) else ItemResult(index=i, item=r, ok=True, value=r)
        for i, r in enumerate(data)
    ]


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _number(result: ItemResult[Any], field: str | None) -> float:
    """The number a successful result holds, or InvalidOptionError naming its index."""
    value: Any = result.value
    if field is not None:
        # An exact key wins, so keys that contain dots still work.
        exact = isinstance(value, Mapping) and field in value
        for part in [field] if exact else field.split("."):
            if not isinstance(value, Mapping) or part not in value:
                raise _bad_value(result, field, _MISSING)
            value = value[part]
    if _is_number(value) and not math.isnan(value):
        return float(value)
    raise _bad_value(result, field, value)


def _bad_value(result: ItemResult[Any], field: str | None, found: Any) -> InvalidOptionError:
    """The error for a value that gives no number (``found`` is _MISSING: no such field)."""
    record, where = result.value, f"item index {result.index}"
    keys = ", ".join(map(repr, record)) if isinstance(record, Mapping) else ""
    if found is _MISSING and field is not None and not isinstance(record, Mapping):
        msg = f"field={field!r} needs dict values, but {where} has {record!r}; pass field=None"
    elif found is _MISSING and field is not None:
        msg = f"field {field!r} is missing in the value of {where}; its fields are {keys}"
    elif field is None and isinstance(record, Mapping):
        msg = f"{where} has a dict value; pass field= naming one of {keys}"
    else:
        what = "the value" if field is None else f"field {field!r}"
        msg = f"{what} of {where} is {found!r} ({type(found).__name__}), not a number"
    return InvalidOptionError(msg + "; or fix or filter that item")


def _numbers(results: Sequence[ItemResult[Any]], field: str | None) -> list[tuple[Any, float]]:
    return [(r, _number(r, field)) for r in results if r.ok]


def _flatten(mapping: Mapping[Any, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _numeric_fields(results: Sequence[ItemResult[Any]]) -> list[str] | None:
    """Dotted names numeric in all successful dict values; None if there are none."""
    common: dict[str, None] | None = None
    for r in results:
        if r.ok and isinstance(r.value, Mapping):
            names = {name: None for name, v in _flatten(r.value) if _is_number(v)}
            common = names if common is None else {n: None for n in common if n in names}
    return None if common is None else list(common)


# --- descriptive statistics ---------------------------------------------------


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Quantile ``q`` in [0, 1] with linear interpolation (numpy's default)."""
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    a, b = sorted_values[lo], sorted_values[min(lo + 1, len(sorted_values) - 1)]
    t = pos - lo
    # Interpolating from the nearer end gives exactly a (or b) when a == b, so
    # constant data has an IQR of exactly 0 and no spurious outliers.
    return a + (b - a) * t if t < 0.5 else b - (b - a) * (1 - t)


@dataclass(frozen=True, slots=True)
class Stats:
    """Descriptive statistics of the numeric values of the successful items.

    ``std`` is the sample standard deviation (n - 1 denominator; 0.0 for one
    value). Quartiles interpolate linearly, like ``numpy.percentile``. With no
    values ``count`` is 0 and every other field is NaN.
    """

    count: int
    mean: float
    std: float
    min: float
    q25: float
    median: float
    q75: float
    max: float

    def __str__(self) -> str:
        names = ("mean", "std", "min", "q25", "median", "q75", "max")
        return f"count={self.count} " + " ".join(f"{n}={getattr(self, n):.6g}" for n in names)


def _stats(values: Sequence[float]) -> Stats:
    if not values:
        return Stats(0, _NAN, _NAN, _NAN, _NAN, _NAN, _NAN, _NAN)
    s = sorted(values)
    std = statistics.stdev(s) if len(s) >= 2 else 0.0
    q25, median, q75 = (_quantile(s, q) for q in (0.25, 0.5, 0.75))
    return Stats(len(s), statistics.fmean(s), std, s[0], q25, median, q75, s[-1])


def describe(data: Data, field: str | None = None) -> Stats:
    """Descriptive statistics of the successful values (or of their ``field``).

    Raises:
        InvalidOptionError: a value lacks ``field``, is a dict while ``field``
            is None, or is not a number (NaN included); the message names the
            item index.
        InvalidItemsError: ``data`` is not a report or a list.
    """
    return _stats([x for _, x in _numbers(_results(data), field)])


def describe_fields(data: Data, fields: Iterable[str] | None = None) -> dict[str, Stats]:
    """``describe`` for several fields at once, keyed by field name.

    With ``fields=None``: every field numeric in *all* successful dict values
    (nested dicts give dotted names); plain numbers give ``{"value": ...}``;
    no successful values give ``{}``.

    Raises:
        InvalidOptionError: as for ``describe``, for any of the fields.
        InvalidItemsError: ``data`` is not a report or a list.
    """
    results = _results(data)
    if fields is None:
        found = _numeric_fields(results)
        if found is None:
            return {"value": describe(results)} if any(r.ok for r in results) else {}
        fields = found
    return {name: describe(results, name) for name in fields}


# --- outliers -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outlier:
    """One value far from the others.

    Attributes:
        index: the item's index (its position for a plain list of values).
        item: the input item (the value itself for a plain list of values).
        value: the numeric value that was judged.
        score: ``"iqr"``: signed distance beyond the nearer quartile, in IQRs
            (+-inf when the IQR is 0); ``"zscore"``: z.
        method: ``"iqr"`` or ``"zscore"``.
    """

    index: int
    item: Any
    value: float
    score: float
    method: str


def _check_limit(name: str, value: float) -> None:
    if not _is_number(value) or math.isnan(value) or value < 0:
        raise InvalidOptionError(f"{name} must be a number >= 0, got {value!r}")


def outliers_iqr(data: Data, field: str | None = None, k: float = 1.5) -> list[Outlier]:
    """Values outside ``[q25 - k * IQR, q75 + k * IQR]`` (Tukey's fences), in input order.

    Raises:
        InvalidOptionError: ``k`` is not a number >= 0, or as for ``describe``.
        InvalidItemsError: ``data`` is not a report or a list.
    """
    _check_limit("k", k)
    pairs = _numbers(_results(data), field)
    if not pairs:
        return []
    s = sorted(x for _, x in pairs)
    q25, q75 = _quantile(s, 0.25), _quantile(s, 0.75)
    iqr = q75 - q25
    out = []
    for r, x in pairs:
        if q25 - k * iqr <= x <= q75 + k * iqr:
            continue
        beyond = x - q25 if x < q25 else x - q75
        score = beyond / iqr if iqr > 0 else math.copysign(math.inf, beyond)
        out.append(Outlier(r.index, r.item, x, score, "iqr"))
    return out


def outliers_zscore(data: Data, field: str | None = None, threshold: float = 3.0) -> list[Outlier]:
    """Values with ``|z| > threshold``, in input order.

    ``z = (x - mean) / std`` with the *sample* std, the one ``describe``
    reports. With n values no |z| exceeds ``(n - 1) / sqrt(n)``, so the default
    threshold finds nothing among 10 values or fewer: use ``outliers_iqr``.

    Raises:
        InvalidOptionError: ``threshold`` is not a number >= 0, or as for ``describe``.
        InvalidItemsError: ``data`` is not a report or a list.
    """
    _check_limit("threshold", threshold)
    pairs = _numbers(_results(data), field)
    if len(pairs) < 2:
        return []
    values = [x for _, x in pairs]
    mean, std = statistics.fmean(values), statistics.stdev(values)
    if std == 0:
        return []
    scored = ((r, x, (x - mean) / std) for r, x in pairs)
    return [Outlier(r.index, r.item, x, z, "zscore") for r, x, z in scored if abs(z) > threshold]


# --- quality and comparison ---------------------------------------------------


@dataclass(frozen=True)
class Quality:
    """Success and failure counts; rates are NaN when ``total`` is 0.

    ``errors_by_type`` maps exception class names to counts, most common first.
    """

    total: int
    succeeded: int
    failed: int
    success_rate: float
    error_rate: float
    errors_by_type: dict[str, int]


def quality(data: Data) -> Quality:
    """Count successes and failures (plain values all count as successes).

    Raises:
        InvalidItemsError: ``data`` is not a report or a list.
    """
    results = _results(data)
    total, failed = len(results), [r for r in results if not r.ok]
    errors = Counter(type(r.error).__name__ if r.error else "unknown" for r in failed)
    return Quality(
        total=total,
        succeeded=total - len(failed),
        failed=len(failed),
        success_rate=(total - len(failed)) / total if total else _NAN,
        error_rate=len(failed) / total if total else _NAN,
        errors_by_type=dict(errors.most_common()),
    )


@dataclass(frozen=True, slots=True)
class FieldComparison:
    """One field of baseline ``a`` and candidate ``b``.

    ``pct_change = 100 * (mean_b - mean_a) / |mean_a|``: 0 when both means are
    0, +-inf when only ``mean_a`` is, NaN when a side has no values.
    """

    field: str
    count_a: int
    count_b: int
    mean_a: float
    mean_b: float
    diff: float
    pct_change: float
    std_a: float
    std_b: float


@dataclass(frozen=True)
class Comparison:
    """Batch-to-batch comparison, field by field, and both success rates."""

    fields: dict[str, FieldComparison]
    success_rate_a: float
    success_rate_b: float

    def changed(self, tolerance_pct: float) -> list[str]:
        """Fields whose mean moved more than ``tolerance_pct`` % (or lack values on a side)."""
        return [
            name
            for name, c in self.fields.items()
            if math.isnan(c.pct_change) or abs(c.pct_change) > tolerance_pct
        ]

    def __str__(self) -> str:
        w = max([5, *map(len, self.fields)])
        heads = ("mean_a", "mean_b", "diff", "change", "std_a", "std_b")
        lines = [f"{'field':<{w}} {'n_a':>6} {'n_b':>6}" + "".join(f"{h:>12}" for h in heads)]
        for c in self.fields.values():
            lines.append(
                f"{c.field:<{w}} {c.count_a:>6} {c.count_b:>6}"
                + "".join(f"{v:>12.6g}" for v in (c.mean_a, c.mean_b, c.diff))
                + f"{c.pct_change:>+11.2f}%"
                + "".join(f"{v:>12.6g}" for v in (c.std_a, c.std_b))
            )
        lines.append(f"success rate: {self.success_rate_a:.1%} -> {self.success_rate_b:.1%}")
        return "\n".join(lines)


def _pct_change(mean_a: float, mean_b: float) -> float:
    diff = mean_b - mean_a
    if math.isnan(diff):
        return _NAN
    if mean_a == 0:
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return 100 * diff / abs(mean_a)


def compare(
    a: Data, b: Data, field: str | None = None, fields: Iterable[str] | None = None
) -> Comparison:
    """Compare a baseline batch ``a`` with a candidate batch ``b``.

    With neither ``field`` nor ``fields``: dict values are compared on every
    field numeric in both batches, plain numbers under the name "value".

    Raises:
        InvalidOptionError: both ``field`` and ``fields`` given, or as for ``describe``.
        InvalidItemsError: ``a`` or ``b`` is not a report or a list.
    """
    if field is not None and fields is not None:
        raise InvalidOptionError("pass either field= or fields=, not both")
    ra, rb = _results(a), _results(b)
    names: list[str | None]
    if fields is not None or field is not None:
        names = list(fields) if fields is not None else [field]
    else:
        fa, fb = _numeric_fields(ra), _numeric_fields(rb)
        if fa is None or fb is None:
            # Plain numbers on both sides, or one side without dict values:
            # then describe() names the item that does not fit.
            names = [None] if fa is None and fb is None else list(fa or fb or [])
        else:
            names = [n for n in fa if n in fb]
    out = {}
    for name in names:
        sa, sb = describe(ra, name), describe(rb, name)
        key = name or "value"
        out[key] = FieldComparison(
            key, sa.count, sb.count, sa.mean, sb.mean, sb.mean - sa.mean,
            _pct_change(sa.mean, sb.mean), sa.std, sb.std,
        )  # fmt: skip
    return Comparison(out, quality(ra).success_rate, quality(rb).success_rate)


def summary_report(
    data: Data, field: str | None = None, title: str = "Batch Summary Report"
) -> str:
    """A short text report: count, mean ± sample std, IQR outliers, quality score.

    The quality score is ``success_rate * (1 - outlier_fraction)``, where the
    outlier fraction is the share of the numeric values that ``outliers_iqr``
    (k=1.5) flags. A line with failures by type appears when items failed.
    With no items the mean reads "nan" and the score "n/a".

    Raises:
        InvalidOptionError: as for ``describe``.
        InvalidItemsError: ``data`` is not a report or a list.
    """
    results = _results(data)
    q, stats = quality(results), describe(results, field)
    n_out = len(outliers_iqr(results, field))
    out_frac = n_out / stats.count if stats.count else 0.0
    lines = [title, "=" * len(title), f"Total measurements: {q.total}"]
    if q.failed:
        by_type = ", ".join(f"{k}: {v}" for k, v in q.errors_by_type.items())
        lines.append(f"Failed: {q.failed} ({q.error_rate:.1%}) - {by_type}")
    lines.append(f"Mean {field or 'value'}: {stats.mean:.4f} ± {stats.std:.4f}")
    lines.append(f"Outliers detected: {n_out} ({out_frac:.1%})")
    score = "n/a" if q.total == 0 else f"{q.success_rate * (1 - out_frac):.1%}"
    lines.append(f"Quality score: {score}")
    return "\n".join(lines)


# --- export -------------------------------------------------------------------


def _record(r: ItemResult[Any]) -> dict[str, Any]:
    error = r.error
    return {
        "index": r.index,
        "ok": r.ok,
        "value": r.value,
        "error_type": None if error is None else type(error).__name__,
        "error_message": None if error is None else str(error),
        "attempts": r.attempts,
        "duration": r.duration,
        "worker": r.worker,
    }


def _flat_table(results: Sequence[ItemResult[Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """Records with dict values spread over ``value.<name>`` columns."""
    rows, value_cols = [], dict[str, None]()
    plain = not any(isinstance(r.value, Mapping) for r in results)
    for r in results:
        row = _record(r)
        value = row.pop("value")
        if isinstance(value, Mapping):
            for name, v in _flatten(value, "value."):
                row[name] = v
                value_cols[name] = None
        elif value is not None:
            plain = True
            row["value"] = value
        rows.append(row)
    columns = ["index", "ok", *(["value"] if plain else []), *value_cols]
    columns += ["error_type", "error_message", "attempts", "duration", "worker"]
    return columns, [{c: row.get(c) for c in columns} for row in rows]


@contextlib.contextmanager
def _text_out(target: PathOrFile, newline: str | None) -> Iterator[IO[str]]:
    if isinstance(target, (str, os.PathLike)):
        with open(target, "w", encoding="utf-8", newline=newline) as f:
            yield f
    else:
        yield target  # the caller's file: written to, never closed


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays have .tolist(); anything else is written as text.
    tolist = getattr(obj, "tolist", None)
    return tolist() if callable(tolist) else str(obj)


def to_jsonl(data: Data, path_or_file: PathOrFile) -> int:
    """Write one JSON object per item; return how many.

    Keys: index, ok, value (numpy values via ``tolist()``, other non-JSON
    objects as ``str``), error_type, error_message, attempts, duration, worker.
    NaN is written as ``NaN``, which ``json.loads`` reads back.

    Raises:
        InvalidItemsError: ``data`` is not a report or a list.
        OSError: the file cannot be written.
    """
    results = _results(data)
    with _text_out(path_or_file, None) as f:
        for r in results:
            f.write(json.dumps(_record(r), default=_json_default, ensure_ascii=False) + "\n")
    return len(results)


def to_csv(data: Data, path_or_file: PathOrFile) -> int:
    """Write a header and one CSV row per item; return how many items.

    Columns: index, ok, then "value" for plain values and ``value.<name>``
    for each field of dict values (nested: dotted names), then error_type,
    error_message, attempts, duration, worker. An empty cell means None.

    Raises:
        InvalidItemsError: ``data`` is not a report or a list.
        OSError: the file cannot be written.
    """
    results = _results(data)
    columns, rows = _flat_table(results)
    with _text_out(path_or_file, "") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return len(results)


def to_dataframe(data: Data) -> pd.DataFrame:
    """The records of ``to_csv`` as a pandas DataFrame, one row per item.

    Raises:
        BackendUnavailable: pandas is not installed.
        InvalidItemsError: ``data`` is not a report or a list.
    """
    try:
        import pandas
    except ImportError as exc:
        raise BackendUnavailable(
            'to_dataframe() needs pandas, which is not installed: pip install "shoal[pandas]"'
        ) from exc
    columns, rows = _flat_table(_results(data))
    frame: pd.DataFrame = pandas.DataFrame(rows, columns=columns)
    return frame
