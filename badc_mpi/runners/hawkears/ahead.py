"""Work done ahead on a rank for the chunks it holds next: their slices cut, their audio announced.

While the resident HawkEars process scores one chunk (or batch), the runner prepares the next:
a virtual chunk's slice is cut out of its recording (:func:`badc_mpi.runners.slicing.slice_input`)
on a thread of the rank, then the file HawkEars will read is announced to the resident process
(``{"op": "prefetch"}``), whose decoder processes decode it at once. Announcing is a hint: a chunk
that was never announced, or whose decode was dropped, is decoded when scored, with the same result.
"""

from __future__ import annotations

import itertools
import os
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from badc_mpi.logs import get_logger
from badc_mpi.runners.slicing import Cut, slice_input

log = get_logger(__name__)

MAX_AHEAD = 64  #: chunks prepared ahead, at most (more are prepared when scored)


@dataclass(frozen=True)
class Prepared:
    """A chunk ready to score: ``chunk`` (its ``input_path`` the cut slice for a virtual chunk)."""

    chunk: Any
    cut: Cut | None
    folder: str  #: where the slice was cut (removed by :meth:`Ahead.discard`)


class Ahead:
    """Slices cut ahead (one thread) and files announced, keyed by chunk key."""

    def __init__(self, announce: Callable[[str], None]) -> None:
        self._announce = announce
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="hawkears-ahead")
        self._futures: dict[str, Future[Prepared]] = {}
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self._closed = False

    def prepare(self, chunks: list[Any], root: str) -> None:
        """Start preparing ``chunks`` (already-prepared ones are skipped), their slices cut under
        ``root`` (the rank's scratch folder); returns at once. Nothing after :meth:`close`."""
        for chunk in chunks:
            with self._lock:
                if self._closed or chunk.key in self._futures:
                    continue
                while len(self._futures) >= MAX_AHEAD:  # never taken (failed before the runner saw it): drop the oldest
                    _drop(self._futures.pop(next(iter(self._futures))))
                folder = os.path.join(root, f"ahead-{next(self._numbers)}")
                future = self._pool.submit(self._prepare, chunk, folder)
                self._futures[chunk.key] = future

    def _prepare(self, chunk: Any, folder: str) -> Prepared:
        scored, cut = slice_input(chunk, folder)  # SliceError: raised again to the attempt that takes it
        try:
            self._announce(scored.input_path)
        except Exception as exc:  # noqa: BLE001 - a hint only: the chunk is decoded when scored
            log.debug("announcing %s failed: %s", scored.input_path, exc)
        return Prepared(scored, cut, folder)

    def take(self, chunk: Any, folder: str) -> Prepared:
        """The prepared chunk (waits for it), else prepared now into ``folder``; SliceError when
        its slice cannot be cut."""
        with self._lock:
            future = self._futures.pop(chunk.key, None)
        if future is not None and not future.cancelled():
            return future.result()
        scored, cut = slice_input(chunk, folder)
        return Prepared(scored, cut, folder)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            futures, self._futures = list(self._futures.values()), {}
        for future in futures:
            _drop(future)
        self._pool.shutdown(wait=True, cancel_futures=True)


def _drop(future: Future[Prepared]) -> None:
    """Cancel a preparation, or remove what it cut once it is done."""
    if not future.cancel():
        future.add_done_callback(lambda f: discard(f.result()) if f.exception() is None else None)


def discard(prepared: Prepared | None) -> None:
    """Remove the slice cut for a chunk once its attempt ended."""
    if prepared is not None and prepared.cut is not None:
        shutil.rmtree(prepared.folder, ignore_errors=True)
