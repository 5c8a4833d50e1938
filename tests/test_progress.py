"""Progress output: whole lines, few of them, when stderr is not a terminal."""
from __future__ import annotations

import io
import time

from xpmet.progress import LogLines, progress_bar


def test_log_lines_without_carriage_returns_and_throttled():
    out = io.StringIO()
    bar = progress_bar(total=100000, desc="etl xp", unit="row", file=out, mininterval=0.05)
    assert isinstance(bar, LogLines)
    t0 = time.monotonic()
    for _ in range(100):
        bar.update(1000)
        time.sleep(0.002)
    bar.close()
    elapsed = time.monotonic() - t0
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 1 <= len(lines) <= elapsed / 0.05 + 3, lines   # at most one per interval, plus first and last
    assert lines[-1].startswith("etl xp: 100%") and "100000/100000" in lines[-1]


def test_disabled_bar_writes_nothing():
    out = io.StringIO()
    bar = progress_bar(enabled=False, total=10, file=out)
    bar.update(10)
    bar.close()
    assert out.getvalue() == ""
