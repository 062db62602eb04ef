"""Survey occasions of detection histories: which local stretch of time an occasion is (pure).

``--occasion`` (docs/results.md, "Detection histories"):

- ``day`` (the default): a local calendar day (``--survey-window`` narrows it to that time of day);
- ``dawn``: each day's survey window only (default ``04:00-10:00``, the dawn chorus);
- ``N-min`` (``10-min``): consecutive N-minute blocks of local time from midnight, within the
  survey window when one is given (a block is cut at the window's edges).

An occasion is keyed by its start: a date (``day``, ``dawn``), a naive local datetime (``N-min``).
``--min-effort-min`` (default 1 minute, the shortest WildTrax task method's unit, ``1SPM``) is the
analysed time an occasion needs to count as surveyed: less is NA, so a 5-s tail after midnight
does not make the next day a survey. Windows cross no midnight (``22:00-02:00`` is refused).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass

from badc_mpi.results.export.meta import ExportError

DAWN_WINDOW = (4 * 60, 10 * 60)  #: 04:00-10:00 local, minutes of the day
MIN_EFFORT_MIN = 1.0
_WINDOW_RE = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")
_BLOCK_RE = re.compile(r"^(\d+)-?min$")

Key = dt.date | dt.datetime


@dataclass(frozen=True)
class OccasionRule:
    kind: str = "day"  #: day | dawn | block
    block_min: int = 0  #: N of N-min
    window: tuple[int, int] | None = None  #: minutes of the local day [start, end)
    min_effort_min: float = MIN_EFFORT_MIN

    @property
    def label(self) -> str:
        return f"{self.block_min}-min" if self.kind == "block" else self.kind

    def key_of(self, when: dt.datetime) -> Key | None:
        """The occasion of the instant ``when`` (None: outside the survey window)."""
        minute = when.hour * 60 + when.minute
        if self.window is not None and not self.window[0] <= minute < self.window[1]:
            return None
        if self.kind != "block":
            return when.date()
        return dt.datetime(when.year, when.month, when.day) + dt.timedelta(minutes=minute // self.block_min * self.block_min)

    def pieces(self, start: dt.datetime, end: dt.datetime) -> Iterator[tuple[Key, dt.datetime, dt.datetime]]:
        """The parts of local ``[start, end)`` in occasions: (key, part start, part end); a
        zero-length span gives its one point's occasion (when inside the window)."""
        day = start.date()
        point = end <= start
        while True:
            midnight = dt.datetime.combine(day, dt.time())
            lo_min, hi_min = self.window or (0, 24 * 60)
            lo, hi = midnight + dt.timedelta(minutes=lo_min), midnight + dt.timedelta(minutes=hi_min)
            a, b = max(start, lo), min(end, hi)
            if a < b or (point and lo <= start < hi):
                if self.kind != "block":
                    yield day, a, max(a, b)
                else:
                    yield from self._blocks(midnight, a, max(a, b), hi, point)
            day += dt.timedelta(days=1)
            if dt.datetime.combine(day, dt.time()) >= end:
                return

    def _blocks(
        self, midnight: dt.datetime, a: dt.datetime, b: dt.datetime, hi: dt.datetime, point: bool
    ) -> Iterator[tuple[Key, dt.datetime, dt.datetime]]:
        step = dt.timedelta(minutes=self.block_min)
        k = int((a - midnight) / step)
        while True:
            block = midnight + k * step
            block_end = min(block + step, hi)
            if point:
                yield block, a, a
                return
            yield block, max(a, block), min(b, block_end)
            if b <= block_end:
                return
            k += 1

    def grid(self, first: Key, last: Key) -> list[Key]:
        """Every occasion key from ``first`` to ``last`` (a deployment's occasions)."""
        if self.kind != "block":
            assert isinstance(first, dt.date) and isinstance(last, dt.date)
            return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
        assert isinstance(first, dt.datetime) and isinstance(last, dt.datetime)
        out: list[Key] = []
        day = first.date()
        lo_min, hi_min = self.window or (0, 24 * 60)
        while day <= last.date():
            midnight = dt.datetime.combine(day, dt.time())
            k = lo_min // self.block_min
            while k * self.block_min < hi_min:
                block = midnight + dt.timedelta(minutes=k * self.block_min)
                if first <= block <= last:
                    out.append(block)
                k += 1
            day += dt.timedelta(days=1)
        return out


def key_text(key: Key) -> str:
    return key.strftime("%Y-%m-%dT%H:%M") if isinstance(key, dt.datetime) else key.isoformat()


def parse_window(text: str) -> tuple[int, int]:
    m = _WINDOW_RE.match(text.strip())
    lo = hi = -1
    if m:
        lo, hi = int(m.group(1)) * 60 + int(m.group(2)), int(m.group(3)) * 60 + int(m.group(4))
    if not m or not 0 <= lo < hi <= 24 * 60 or int(m.group(2)) > 59 or int(m.group(4)) > 59:
        raise ExportError(
            f"--survey-window {text!r} is not a local time span within one day",
            fix="give HH:MM-HH:MM with the start before the end, e.g. 04:00-10:00",
        )
    return lo, hi


def occasion_rule(kind: str, window: str | None, min_effort_min: float) -> OccasionRule:
    """The rule of ``--occasion``, ``--survey-window``, ``--min-effort-min`` (ExportError when bad)."""
    span = parse_window(window) if window else None
    if not min_effort_min >= 0:
        raise ExportError(f"--min-effort-min {min_effort_min} is negative", fix="give minutes, e.g. 1")
    text = kind.strip().lower()
    if text == "day":
        return OccasionRule("day", 0, span, min_effort_min)
    if text == "dawn":
        return OccasionRule("dawn", 0, span or DAWN_WINDOW, min_effort_min)
    m = _BLOCK_RE.match(text)
    if m and 1 <= int(m.group(1)) <= 24 * 60:
        minutes = int(m.group(1))
        if min_effort_min > minutes:
            raise ExportError(
                f"--min-effort-min {min_effort_min} is longer than a {minutes}-min occasion",
                fix=f"give at most {minutes}",
            )
        return OccasionRule("block", minutes, span, min_effort_min)
    raise ExportError(f"--occasion {kind!r} is not an occasion", fix="use day, dawn or N-min (e.g. 10-min)")
