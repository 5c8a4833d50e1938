"""Progress for long work: a live bar on a terminal; in batch logs (SLURM, CI, pipes) a plain line
every few seconds instead of thousands of carriage-return frames."""
from __future__ import annotations

import sys

from tqdm import tqdm

#: seconds between lines when the output is not a terminal
LOG_INTERVAL = 10.0


class _Lines:
    """A file wrapper that drops tqdm's bare carriage returns and line ends (LogLines writes whole lines)."""

    def __init__(self, fp):
        self.fp = fp

    def write(self, s):
        if s.strip("\r\n"):
            self.fp.write(s.replace("\r", ""))

    def flush(self):
        self.fp.flush()


class LogLines(tqdm):
    """tqdm that writes whole lines (no carriage returns), at most one every ``mininterval`` seconds."""

    _last_line = float("-inf")
    _closing = False
    _done_shown = False

    def display(self, msg=None, pos=None):
        # set_postfix() and refresh() redraw at once on a terminal; in a log they wait their turn
        now = self._time()
        done = self.total is not None and self.n >= self.total
        if not (self._closing or done) and now - self._last_line < self.mininterval:
            return True
        if self._closing and self._done_shown:
            return True  # the 100 % line is already there
        self._last_line, self._done_shown = now, done
        self.fp.write((self.__str__() if msg is None else msg) + "\n")
        self.fp.flush()
        return True

    def close(self):
        self._closing = True
        super().close()


def progress_bar(*, enabled: bool = True, file=None, **kwargs) -> tqdm:
    """A tqdm bar (same arguments) that suits where it is written: ``file`` defaults to stderr."""
    fp = file or sys.stderr
    if not enabled:
        return tqdm(disable=True, **kwargs)
    if hasattr(fp, "isatty") and fp.isatty():
        return tqdm(file=fp, dynamic_ncols=True, **kwargs)
    kwargs.setdefault("mininterval", LOG_INTERVAL)
    kwargs.pop("dynamic_ncols", None)
    return LogLines(file=_Lines(fp), ncols=100, ascii=True, **kwargs)


def note(message: str) -> None:
    """A message printed above a live bar (or as its own line in a log)."""
    tqdm.write(message, file=sys.stderr)
