"""Tests of result aggregation: statistics, outliers, quality, compare, export."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal._aggregate import (
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
from shoal._core.errors import BackendUnavailable, InvalidItemsError, InvalidOptionError
from shoal._core.results import BatchReport, ItemResult

floats = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


def ok(index: int, value: Any, item: Any = None) -> ItemResult[Any]:
    return ItemResult(index=index, item=item, ok=True, value=value, worker="w1", duration=0.5)


def fail(index: int, error: BaseException, item: Any = None) -> ItemResult[Any]:
    return ItemResult(index=index, item=item, ok=False, error=error, attempts=3)


def report(results: list[ItemResult[Any]]) -> BatchReport[Any]:
    return BatchReport(results, backend="thread", backend_reason="test", workers=2, wall_time=1.0)


# --- describe -----------------------------------------------------------------


def test_describe_hand_computed_odd() -> None:
    s = describe([5, 1, 4, 2, 3])
    assert s == Stats(5, 3.0, math.sqrt(2.5), 1.0, 2.0, 3.0, 4.0, 5.0)


def test_describe_hand_computed_even_interpolates() -> None:
    s = describe([4.0, 1.0, 3.0, 2.0])
    assert (s.q25, s.median, s.q75) == (1.75, 2.5, 3.25)
    assert s.std == pytest.approx(math.sqrt(5 / 3))
    assert str(s) == "count=4 mean=2.5 std=1.29099 min=1 q25=1.75 median=2.5 q75=3.25 max=4"


def test_describe_single_and_empty() -> None:
    one = describe([7])
    assert (one.count, one.mean, one.std, one.median) == (1, 7.0, 0.0, 7.0)
    empty = describe([])
    assert empty.count == 0
    assert all(math.isnan(getattr(empty, f)) for f in ("mean", "std", "min", "q25", "max"))
    assert describe([fail(0, ValueError())]).count == 0  # only failures: also empty


def test_describe_skips_failures_in_results_and_reports() -> None:
    results = [ok(0, 1.0), fail(1, ValueError("x")), ok(2, 3.0)]
    assert describe(results) == describe(report(results)) == describe([1.0, 3.0])


def test_describe_fields_of_dicts() -> None:
    values = [{"amp": 1.0, "freq": 10, "name": "a"}, {"amp": 3.0, "freq": 30, "name": "b"}]
    assert describe(values, field="amp").mean == 2.0
    assert describe(values, "freq").max == 30.0


def test_nested_and_dotted_fields() -> None:
    values = [{"m": {"amp": 1}, "x.y": 5}, {"m": {"amp": 3}, "x.y": 7}]
    assert describe(values, "m.amp").mean == 2.0
    assert describe(values, "x.y").mean == 6.0  # an exact key with a dot wins


def test_describe_fields_discovers_common_numeric_fields() -> None:
    values = [
        {"amp": 1.0, "freq": 10, "name": "a", "ok": True, "m": {"snr": 3}, "extra": 1},
        {"amp": 3.0, "freq": 30, "name": "b", "ok": False, "m": {"snr": 5}},
    ]
    stats = describe_fields([*map(lambda v: ok(0, v), values), fail(2, OSError())])
    assert list(stats) == ["amp", "freq", "m.snr"]  # bools, strings, partial fields left out
    assert stats["m.snr"].mean == 4.0
    assert list(describe_fields(values, ["freq"])) == ["freq"]
    assert describe_fields([1, 2, 3]) == {"value": describe([1, 2, 3])}
    assert describe_fields([]) == {}


@given(st.lists(floats, min_size=1, max_size=60))
def test_describe_matches_numpy(xs: list[float]) -> None:
    s = describe(xs)
    arr = np.array(xs)
    assert s.count == len(xs)
    assert (s.min, s.max) == (arr.min(), arr.max())
    assert s.mean == pytest.approx(arr.mean(), rel=1e-9, abs=1e-6)
    q25, med, q75 = np.percentile(arr, [25, 50, 75])
    assert s.q25 == pytest.approx(q25, rel=1e-9, abs=1e-6)
    assert s.median == pytest.approx(med, rel=1e-9, abs=1e-6)
    assert s.q75 == pytest.approx(q75, rel=1e-9, abs=1e-6)
    assert s.min <= s.q25 <= s.median <= s.q75 <= s.max
    expected_std = arr.std(ddof=1) if len(xs) >= 2 else 0.0
    assert s.std == pytest.approx(expected_std, rel=1e-7, abs=1e-6)


# --- outliers -----------------------------------------------------------------


def planted() -> list[ItemResult[Any]]:
    results = [ok(i, {"amp": 2.0 + (i % 5) * 0.01}, item=f"file_{i:02d}.wav") for i in range(30)]
    results[7] = ok(7, {"amp": 9.0}, item="file_07.wav")
    results[19] = ok(19, {"amp": -4.0}, item="file_19.wav")
    results[11] = fail(11, TimeoutError("slow"), item="file_11.wav")
    return results


def test_outliers_iqr_names_the_planted_items() -> None:
    found = outliers_iqr(planted(), field="amp")
    assert [(o.index, o.item, o.value, o.method) for o in found] == [
        (7, "file_07.wav", 9.0, "iqr"),
        (19, "file_19.wav", -4.0, "iqr"),
    ]
    amps = sorted(r.unwrap()["amp"] for r in planted() if r.ok)
    q25, q75 = np.percentile(amps, [25, 75])
    assert found[0].score == pytest.approx((9.0 - q75) / (q75 - q25))
    assert found[1].score == pytest.approx((-4.0 - q25) / (q75 - q25))
    assert found[1].score < 0 < found[0].score


def test_outliers_iqr_k_and_degenerate_cases() -> None:
    assert outliers_iqr([]) == []
    assert outliers_iqr([3.3] * 10) == []  # IQR exactly 0: nothing flagged
    (o,) = outliers_iqr([3.3] * 10 + [4.0])
    assert (o.index, o.item, o.score) == (10, 4.0, math.inf)  # plain list: item is the value
    assert len(outliers_iqr([1, 2, 3, 4, 10], k=1.5)) == 1
    assert outliers_iqr([1, 2, 3, 4, 10], k=3.0) == []


@given(st.lists(st.integers(-1000, 1000), min_size=1, max_size=50), st.sampled_from([0.5, 1.5]))
def test_outliers_iqr_matches_numpy_fences(xs: list[int], k: float) -> None:
    q25, q75 = np.percentile(xs, [25, 75])
    low, high = q25 - k * (q75 - q25), q75 + k * (q75 - q25)
    expected = [i for i, x in enumerate(xs) if x < low or x > high]
    assert [o.index for o in outliers_iqr(xs, k=k)] == expected


def test_outliers_zscore_uses_sample_std() -> None:
    found = outliers_zscore(planted(), field="amp")
    assert [(o.index, o.item, o.method) for o in found] == [
        (7, "file_07.wav", "zscore"),
        (19, "file_19.wav", "zscore"),
    ]
    amps = np.array([r.unwrap()["amp"] for r in planted() if r.ok])
    assert [o.score for o in found] == pytest.approx(
        [(9.0 - amps.mean()) / amps.std(ddof=1), (-4.0 - amps.mean()) / amps.std(ddof=1)]
    )  # about +3.99 and -3.48
    assert [o.index for o in outliers_zscore(planted(), "amp", threshold=3.7)] == [7]


def test_outliers_zscore_degenerate() -> None:
    assert outliers_zscore([1.0]) == []
    assert outliers_zscore([2.0] * 20) == []
    assert outliers_zscore([0.0] * 9 + [100.0]) == []  # n=10: |z| <= 9/sqrt(10) < 3


# --- quality, compare, report -------------------------------------------------


def test_quality_counts_failures_by_type() -> None:
    results = [ok(0, 1), fail(1, ValueError()), fail(2, TimeoutError()), fail(3, ValueError())]
    q = quality(report(results))
    assert (q.total, q.succeeded, q.failed) == (4, 1, 3)
    assert (q.success_rate, q.error_rate) == (0.25, 0.75)
    assert list(q.errors_by_type.items()) == [("ValueError", 2), ("TimeoutError", 1)]
    assert quality([1, 2]).success_rate == 1.0
    empty = quality([])
    assert empty.total == 0 and math.isnan(empty.success_rate) and empty.errors_by_type == {}


def test_compare_plain_numbers() -> None:
    c = compare([1, 2, 3], [ok(0, 2), ok(1, 3), ok(2, 4), fail(3, OSError())])
    f = c.fields["value"]
    assert (f.count_a, f.count_b, f.mean_a, f.mean_b, f.diff) == (3, 3, 2.0, 3.0, 1.0)
    assert (f.pct_change, f.std_a, f.std_b) == (50.0, 1.0, 1.0)
    assert (c.success_rate_a, c.success_rate_b) == (1.0, 0.75)
    assert c.changed(10) == ["value"] and c.changed(60) == []
    lines = str(c).splitlines()
    assert lines[0].split() == "field n_a n_b mean_a mean_b diff change std_a std_b".split()
    assert lines[1].split() == ["value", "3", "3", "2", "3", "1", "+50.00%", "1", "1"]
    assert lines[2] == "success rate: 100.0% -> 75.0%"


def test_compare_dict_fields() -> None:
    a = [{"amp": 2.0, "freq": 100, "only_a": 1}, {"amp": 2.0, "freq": 100, "only_a": 1}]
    b = [{"amp": 2.2, "freq": 100}, {"amp": 1.8, "freq": 100}]
    c = compare(a, b)
    assert list(c.fields) == ["amp", "freq"]
    assert c.fields["amp"].pct_change == pytest.approx(0.0, abs=1e-12)
    assert c.fields["amp"].std_b == pytest.approx(math.sqrt(0.08))
    assert list(compare(a, b, field="freq").fields) == ["freq"]
    assert list(compare(a, b, fields=["amp"]).fields) == ["amp"]


def test_compare_zero_and_empty_baselines() -> None:
    assert compare([0, 0], [1, 1]).fields["value"].pct_change == math.inf
    assert compare([0, 0], [0, 0]).fields["value"].pct_change == 0.0
    c = compare([], [1.0])
    assert math.isnan(c.fields["value"].pct_change) and c.changed(1000) == ["value"]


def test_summary_report_like_the_seed() -> None:
    results = [ok(i, {"amplitude": v}) for i, v in enumerate([1, 2, 3, 4, 100])]
    results.append(fail(5, ValueError("clipped")))
    assert summary_report(results, field="amplitude") == "\n".join(
        [
            "Batch Summary Report",
            "====================",
            "Total measurements: 6",
            "Failed: 1 (16.7%) - ValueError: 1",
            "Mean amplitude: 22.0000 ± 43.6177",  # sqrt(7610 / 4)
            "Outliers detected: 1 (20.0%)",  # 100 > q75 + 1.5 IQR = 7
            "Quality score: 66.7%",  # 5/6 * (1 - 1/5)
        ]
    )


def test_summary_report_without_failures_and_empty() -> None:
    text = summary_report([2.0, 2.0, 2.0, 2.0], title="Nightly")
    assert text.splitlines() == [
        "Nightly",
        "=======",
        "Total measurements: 4",
        "Mean value: 2.0000 ± 0.0000",
        "Outliers detected: 0 (0.0%)",
        "Quality score: 100.0%",
    ]
    empty = summary_report([])
    assert "Mean value: nan ± nan" in empty and empty.endswith("Quality score: n/a")


# --- export -------------------------------------------------------------------


def export_results() -> list[ItemResult[Any]]:
    return [
        ok(0, {"amp": 0.1, "meta": {"snr": 3}}),
        fail(1, ValueError('bad, "quoted"\nline')),
        ok(2, {"amp": 2.5e-17, "meta": {"snr": 7}}),
    ]


@pytest.mark.parametrize("to_file", [True, False])
def test_jsonl_round_trip(tmp_path: Path, to_file: bool) -> None:
    if to_file:
        path = tmp_path / "out.jsonl"
        assert to_jsonl(report(export_results()), path) == 3
        text = path.read_text(encoding="utf-8")
    else:
        buf = io.StringIO()
        assert to_jsonl(export_results(), buf) == 3
        text = buf.getvalue()
    rows = [json.loads(line) for line in text.splitlines()]
    assert rows[0] == {
        "index": 0, "ok": True, "value": {"amp": 0.1, "meta": {"snr": 3}},
        "error_type": None, "error_message": None, "attempts": 1, "duration": 0.5, "worker": "w1",
    }  # fmt: skip
    assert rows[1]["ok"] is False and rows[1]["value"] is None
    assert (rows[1]["error_type"], rows[1]["attempts"]) == ("ValueError", 3)
    assert rows[1]["error_message"] == 'bad, "quoted"\nline'
    assert rows[2]["value"]["amp"] == 2.5e-17


def test_jsonl_converts_numpy_and_other_objects() -> None:
    buf = io.StringIO()
    to_jsonl([np.float32(1.5), np.arange(3), Path("a/b")], buf)
    assert [json.loads(x)["value"] for x in buf.getvalue().splitlines()] == [1.5, [0, 1, 2], "a/b"]


def test_csv_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    assert to_csv(export_results(), str(path)) == 3
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == [
        "index", "ok", "value.amp", "value.meta.snr",
        "error_type", "error_message", "attempts", "duration", "worker",
    ]  # fmt: skip
    assert [float(r["value.amp"]) for r in (rows[0], rows[2])] == [0.1, 2.5e-17]
    assert rows[1]["value.amp"] == "" and rows[1]["error_type"] == "ValueError"
    assert rows[1]["error_message"] == 'bad, "quoted"\nline'
    assert (rows[2]["index"], rows[2]["ok"], rows[2]["value.meta.snr"]) == ("2", "True", "7")


def test_csv_plain_values() -> None:
    buf = io.StringIO()
    to_csv([1.5, "x"], buf)
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert [r["value"] for r in rows] == ["1.5", "x"]


def test_to_dataframe() -> None:
    df = to_dataframe(report(export_results()))
    assert list(df.columns) == [
        "index", "ok", "value.amp", "value.meta.snr",
        "error_type", "error_message", "attempts", "duration", "worker",
    ]  # fmt: skip
    assert df["index"].tolist() == [0, 1, 2]
    assert df["ok"].tolist() == [True, False, True]
    assert df["value.amp"].iloc[2] == 2.5e-17 and math.isnan(df["value.amp"].iloc[1])
    assert df["error_type"].iloc[1] == "ValueError"


def test_to_dataframe_without_pandas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(BackendUnavailable, match=r'pip install "shoal\[pandas\]"') as info:
        to_dataframe([1, 2])
    assert isinstance(info.value, ImportError)


def test_import_is_light() -> None:
    code = "import sys, shoal._aggregate; print('numpy' in sys.modules, 'pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# --- errors -------------------------------------------------------------------


def test_missing_field_names_field_and_index() -> None:
    data = [ok(0, {"amp": 1}), ok(4, {"freq": 2})]
    with pytest.raises(InvalidOptionError, match=r"field 'amp' is missing .*item index 4"):
        describe(data, "amp")
    with pytest.raises(InvalidOptionError, match=r"'m.x' is missing .*item index 0"):
        describe([{"m": {"y": 1}}], "m.x")


@pytest.mark.parametrize("bad", ["1.0", None, True, math.nan, [1]])
def test_non_numeric_value_names_index(bad: Any) -> None:
    with pytest.raises(InvalidOptionError, match=r"field 'amp' of item index 1 is"):
        outliers_iqr([{"amp": 1}, {"amp": bad}], "amp")
    with pytest.raises(InvalidOptionError, match=r"the value of item index 2 is"):
        describe([1, 2, bad])


def test_dict_without_field_and_field_without_dict() -> None:
    with pytest.raises(InvalidOptionError, match=r"item index 0 has a dict value.*'amp'"):
        summary_report([{"amp": 1}])
    with pytest.raises(InvalidOptionError, match=r"needs dict values.*item index 0"):
        describe([1.0], field="amp")


def test_bad_options_and_data() -> None:
    with pytest.raises(InvalidOptionError, match="either field= or fields="):
        compare([1], [1], field="a", fields=["a"])
    with pytest.raises(InvalidOptionError, match="k must be a number >= 0"):
        outliers_iqr([1], k=-1)
    with pytest.raises(InvalidOptionError, match="threshold must be"):
        outliers_zscore([1], threshold=math.nan)
    for data in ("abc", {"a": 1}, 5):
        with pytest.raises(InvalidItemsError, match="data must be"):
            quality(data)  # type: ignore[arg-type]
