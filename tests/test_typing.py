"""The options as a type checker and ``help()`` see them (issue 15).

The positive cases are ``assert_type`` in typing_api.py (mypy --strict in
``make test``); here mypy runs on calls it must refuse, and the runtime
signatures and docstrings are checked against ``shoal.Options``.
"""

from __future__ import annotations

import dataclasses
import inspect
import pydoc
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal._core import signatures

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = [f.name for f in dataclasses.fields(shoal.Options)]

SNIPPET = """\
import shoal

def square(x: int) -> int:
    return x

shoal.map(square, [1], workers=4, on_error="skip_failed")   # line 6: fine
shoal.map(square, [1], worker=4)                          # line 7
shoal.map(square, [1], workers="4")                       # line 8
shoal.map(square, [1], on_error="skip")                   # line 9
shoal.run(square, [1], backend="thread")                  # line 10
shoal.imap(square, ["a"])                                 # line 11: str items, int fn
pool = shoal.Pool(workers="4")                            # line 12
shoal.Pool().map(square, [1], workers=4)                  # line 13: the pool's own
shoal.Executor(2, backend="auto")                         # line 14
shoal.starmap(square, [1])                                # line 15: not tuples
"""


def _mypy(tmp_path: Path, code: str) -> dict[int, str]:
    path = tmp_path / "snippet.py"
    path.write_text(code)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", "--show-error-codes",
         "--cache-dir", str(ROOT / ".mypy_cache"), str(path)],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    errors: dict[int, str] = {}
    for line in done.stdout.splitlines():
        m = re.match(r".*snippet\.py:(\d+): error: (.*)", line)
        if m:
            errors[int(m.group(1))] = errors.get(int(m.group(1)), "") + m.group(2)
    return errors


@pytest.mark.timeout(300)
def test_mypy_refuses_bad_options(tmp_path: Path) -> None:
    errors = _mypy(tmp_path, SNIPPET)
    assert set(errors) == {7, 8, 9, 10, 11, 12, 13, 14, 15}, errors
    assert "worker" in errors[7]
    assert '"str"' in errors[8] or "No overload" in errors[8]


def test_the_typed_dicts_cover_every_option() -> None:
    run_keys = set(signatures.RunOptions.__annotations__)
    for base in signatures.RunOptions.__mro__:
        run_keys |= set(getattr(base, "__annotations__", {}))
    assert run_keys == set(OPTIONS)
    pool_keys = set(signatures.PoolRunOptions.__required_keys__
                    | signatures.PoolRunOptions.__optional_keys__)
    assert pool_keys == set(OPTIONS) - set(signatures.WORKER_OPTIONS) | {"backend"}
    assert set(signatures.option_help()) == set(OPTIONS)


@pytest.mark.parametrize("fn", [shoal.map, shoal.run, shoal.imap, shoal.amap, shoal.aimap,
                                shoal.arun_batch, shoal.starmap])
def test_every_option_is_a_keyword_parameter_with_its_default(fn: Any) -> None:
    params = inspect.signature(fn).parameters
    for name in OPTIONS:
        assert name in params, name
    defaults = signatures.option_defaults()
    for name in OPTIONS:
        if name not in ("on_error", "ordered"):
            assert params[name].default == defaults[name], name
            assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
    assert params["retries"].default == 0 and params["workers"].default is None
    expected = "all_or_nothing" if fn in (shoal.map, shoal.amap, shoal.starmap) \
        else "collect_errors"
    assert params["on_error"].default == expected


def test_help_shows_every_option_with_its_meaning() -> None:
    # pydoc.plaintext (text without bold) is in pydoc, not in typeshed's pydoc.pyi
    text = pydoc.render_doc(shoal.map, renderer=pydoc.plaintext)  # type: ignore[attr-defined]
    for name in OPTIONS:
        assert f"{name}:" in text, name
    assert "backend='auto'" in text and "chunk_size='auto'" in text
    assert "seconds per attempt of one item" in text  # timeout's meaning
    assert "min(32, CPUs + 4)" in text  # workers' default per backend
    assert "Options (keyword-only" in textwrap.dedent(shoal.map.__doc__ or "")


def test_pool_methods_show_only_per_call_options() -> None:
    params = inspect.signature(shoal.Pool.map).parameters
    assert "retries" in params and "workers" not in params and "initializer" not in params
    assert "the pool's own" in (shoal.Pool.map.__doc__ or "")
    pool_params = inspect.signature(shoal.Pool).parameters
    for name in signatures.WORKER_OPTIONS:
        assert name in pool_params, name


def test_options_docstring_documents_every_field() -> None:
    doc = shoal.Options.__doc__ or ""
    for name in OPTIONS:
        assert re.search(rf"^\s+{name}: ", doc, re.M), name
