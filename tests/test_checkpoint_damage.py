"""A damaged checkpoint (pages corrupt, header intact) says so and can be salvaged."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal._core.errors import (
    CheckpointDamaged,
    CheckpointMismatch,
    InvalidOptionError,
    ShoalError,
)
from shoal._core.results import ItemResult
from shoal._sinks.checkpoint import open_checkpoint, salvage_checkpoint, summarize

N = 1500
CALLS: list[int] = []


def job(x: int) -> Any:
    CALLS.append(x)
    return _value(x)


def _value(i: int) -> Any:
    # Every 10th value is a tuple (pickled and signed), the rest JSON.
    return (i, "pickled") if i % 10 == 0 else {"i": i, "pad": "x" * 100}


def _pages(path: Path, table: str, kind: str) -> list[int]:
    conn = sqlite3.connect(path)
    try:
        return [p for (p,) in conn.execute(
            "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = ? ORDER BY pageno",
            (table, kind))]
    except sqlite3.OperationalError:  # an SQLite built without dbstat
        pytest.skip("this SQLite has no dbstat table to locate pages with")
    finally:
        conn.close()


def _corrupt(path: Path, page: int, data: bytes | None = None) -> None:
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(18)[16:18], "big")  # page size: header bytes 16-17
        f.seek((page - 1) * size)
        f.write(data if data is not None else random.Random(page).randbytes(size))


@pytest.fixture
def damaged(tmp_path: Path) -> Path:
    """A checkpoint of N results whose middle leaf page of results is garbage."""
    path = tmp_path / "run.db"
    with open_checkpoint(path, job) as store:
        store.record([ItemResult(i, i, ok=True, value=_value(i)) for i in range(N)])
    leaves = _pages(path, "results", "leaf")
    assert len(leaves) > 10
    _corrupt(path, leaves[len(leaves) // 2])
    return path


def test_a_damaged_checkpoint_names_the_file_and_the_ways_out(damaged: Path) -> None:
    with pytest.raises(CheckpointDamaged) as info:
        open_checkpoint(damaged, job)
    err = info.value
    assert isinstance(err, OSError) and isinstance(err, ShoalError)
    assert err.path == damaged
    assert isinstance(err.__cause__, sqlite3.DatabaseError)
    msg = str(err)
    assert f"checkpoint {damaged} is damaged" in msg and "malformed" in msg
    assert "Start afresh with another checkpoint path" in msg
    assert f"shoal report {damaged} --salvage" in msg and "shoal.salvage_checkpoint(" in msg
    assert not Path(f"{damaged}.lock").exists()  # a refused open holds nothing
    with pytest.raises(CheckpointDamaged, match="is damaged"):
        summarize(damaged)
    with pytest.raises(CheckpointDamaged, match="is damaged"):
        shoal.run(job, range(N), checkpoint=damaged, backend="sequential")


def test_salvage_keeps_every_readable_result_and_the_resume_runs_only_the_lost(
        damaged: Path, tmp_path: Path) -> None:
    kept_path = tmp_path / "kept.db"
    kept = salvage_checkpoint(damaged, kept_path)
    assert N - 60 < kept < N  # one leaf page of rows lost, no more

    with open_checkpoint(kept_path, job) as store:
        restored = {i: store.restore(i, i) for i in range(N)}
    lost = sorted(i for i, r in restored.items() if r is None)
    assert len(lost) == N - kept and lost == list(range(lost[0], lost[-1] + 1))  # one range
    for i, r in restored.items():
        if r is not None:  # pickled rows kept their tags: they load
            assert r.value == _value(i) and type(r.value) is type(_value(i))

    CALLS.clear()
    report = shoal.run(job, range(N), checkpoint=kept_path, backend="sequential")
    assert sorted(CALLS) == lost
    assert report.restored == kept and report.values == [_value(i) for i in range(N)]
    assert summarize(kept_path)["total"] == N


def test_damage_found_when_a_row_is_read_is_reported_there(tmp_path: Path) -> None:
    # A big value spills onto overflow pages, which opening the file never reads.
    path = tmp_path / "run.db"
    with open_checkpoint(path, job) as store:
        store.record([ItemResult(i, i, ok=True, value=i) for i in range(100)])
        store.record([ItemResult(50, 50, ok=True, value="y" * 20_000)])
    for page in _pages(path, "results", "overflow"):
        _corrupt(path, page, b"\xff\xff\xff\xff")  # each page's "next page" pointer
    with open_checkpoint(path, job) as store:
        assert store.restore(49, 49) is not None
        with pytest.raises(CheckpointDamaged, match=f"checkpoint {path} is damaged"):
            store.restore(50, 50)
    assert salvage_checkpoint(path, tmp_path / "kept.db") == 99  # that row alone is lost
    with open_checkpoint(tmp_path / "kept.db", job) as store:
        assert store.restore(50, 50) is None and store.restore(51, 51) is not None


def test_a_checkpoint_without_a_readable_job_cannot_be_salvaged(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    with open_checkpoint(path, job) as store:
        store.record([ItemResult(0, 0, ok=True, value=0)])
    _corrupt(path, _pages(path, "meta", "leaf")[0])
    with pytest.raises(CheckpointDamaged, match="is damaged"):
        open_checkpoint(path, job)
    with pytest.raises(CheckpointDamaged, match="beyond salvage") as info:
        salvage_checkpoint(path, tmp_path / "kept.db")
    assert "start afresh with another checkpoint path" in str(info.value)
    assert not (tmp_path / "kept.db").exists()


def test_salvage_refuses_to_overwrite_and_to_read_what_is_not_a_checkpoint(
        damaged: Path, tmp_path: Path) -> None:
    (tmp_path / "exists.db").write_text("precious")
    with pytest.raises(InvalidOptionError, match="exists already"):
        salvage_checkpoint(damaged, tmp_path / "exists.db")
    assert (tmp_path / "exists.db").read_text() == "precious"
    (tmp_path / "junk.db").write_bytes(b"junk" * 1000)
    with pytest.raises(CheckpointMismatch, match="not a shoal checkpoint"):
        salvage_checkpoint(tmp_path / "junk.db", tmp_path / "kept.db")
    with pytest.raises(InvalidOptionError, match="no checkpoint at"):
        salvage_checkpoint(tmp_path / "missing.db", tmp_path / "kept.db")


def test_salvage_of_a_sound_checkpoint_copies_it_whole(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    with open_checkpoint(path, job) as store:
        store.record([ItemResult(i, i, ok=True, value=_value(i)) for i in range(300)])
        store.record([ItemResult(300, 300, ok=False, error=ValueError("v"))])
    assert salvage_checkpoint(path, tmp_path / "copy.db") == 301
    original, copy = summarize(path), summarize(tmp_path / "copy.db")
    assert {k: v for k, v in copy.items() if k != "path"} == {
        k: v for k, v in original.items() if k != "path"}
