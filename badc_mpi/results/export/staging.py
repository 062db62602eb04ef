"""The exports' writing side: every file streamed into a hidden staging folder inside the output
folder, then, once all of them were written, made durable (each file fsynced, many at a time, as
the chunker does for its status files; never the whole node's ``os.sync()``) and renamed one by one
onto its final name, then each final folder fsynced. A failure before that removes
the staging folder: nothing of a failed export is ever visible, and each final file appears
whole or not at all.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from collections.abc import Sequence
from typing import IO, Any

from badc_mpi.storage.atomic import ensure_dir, fsync_dir, fsync_paths, temp_path_for


def csv_text(rows: Sequence[Sequence[Any]], delimiter: str = ",") -> str:
    """Rows as CSV text (the ``csv`` module's quoting), to write once into several files."""
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator="\n").writerows(rows)
    return buf.getvalue()


class StagedFiles:
    """Files under ``out_dir``, written to ``<out_dir>/.export.tmp-<pid>-<hex>/`` first."""

    def __init__(self, out_dir: str) -> None:
        self._created = not os.path.isdir(out_dir)
        self.out_dir = ensure_dir(out_dir)
        self.staging = temp_path_for(os.path.join(self.out_dir, "export"))
        os.mkdir(self.staging)
        self._open: dict[str, tuple[IO[str], Any]] = {}
        self.names: list[str] = []  #: relative paths, in the order first written

    def _path(self, rel: str) -> str:
        path = os.path.join(self.staging, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if rel not in self.names:
            self.names.append(rel)
        return path

    def writer(self, rel: str, header: Sequence[str] | None = None, delimiter: str = ",") -> Any:
        """A ``csv.writer`` on ``rel``, opened (and given ``header``) on first use."""
        if rel not in self._open:
            handle = open(self._path(rel), "w", encoding="utf-8", newline="")  # noqa: SIM115 (closed by commit/abort)
            writer = csv.writer(handle, delimiter=delimiter, lineterminator="\n")
            if header is not None:
                writer.writerow(header)
            self._open[rel] = (handle, writer)
        return self._open[rel][1]

    def append_text(self, rel: str, text: str, header: Sequence[str] | None = None, delimiter: str = ",") -> None:
        """Rows already formatted (:func:`csv_text`) onto ``rel``, opened like :meth:`writer`."""
        self.writer(rel, header, delimiter)
        self._open[rel][0].write(text)

    def write_rows(self, rel: str, rows: Sequence[Sequence[Any]], header: Sequence[str] | None, delimiter: str = ",") -> None:
        """A whole small file (one recording's Raven table, a history), closed at once."""
        with open(self._path(rel), "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, delimiter=delimiter, lineterminator="\n")
            if header is not None:
                writer.writerow(header)
            writer.writerows(rows)

    def write_text(self, rel: str, text: str) -> None:
        with open(self._path(rel), "w", encoding="utf-8", newline="") as handle:
            handle.write(text)

    def _close(self) -> None:
        for handle, _ in self._open.values():
            handle.close()
        self._open.clear()

    def commit(self, last: str | None = None) -> list[str]:
        """Make every file durable and rename it into place (``last``, e.g. ``export.json``, at
        the very end); remove the staging folder. Returns the final paths."""
        self._close()
        fsync_paths([os.path.join(self.staging, rel) for rel in self.names])
        order = [n for n in self.names if n != last] + ([last] if last in self.names else [])
        folders: set[str] = set()
        done = []
        for rel in order:
            target = os.path.join(self.out_dir, rel)
            folder = os.path.dirname(target)
            if folder not in folders:
                ensure_dir(folder)
                folders.add(folder)
            os.replace(os.path.join(self.staging, rel), target)
            done.append(target)
        for folder in folders:
            fsync_dir(folder)
        shutil.rmtree(self.staging, ignore_errors=True)
        return done

    def abort(self) -> None:
        """Remove the staging folder (and the output folder when this made it and it is empty)."""
        self._close()
        shutil.rmtree(self.staging, ignore_errors=True)
        if self._created:
            try:
                os.rmdir(self.out_dir)
            except OSError:
                pass
