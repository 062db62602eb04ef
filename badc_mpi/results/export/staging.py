"""The exports' writing side: every file streamed into a hidden staging folder inside the output
folder, then, once all of them were written, made durable (each file fsynced, many at a time, as
the chunker does for its status files; never the whole node's ``os.sync()``) and renamed one by one
onto its final name, then each final folder fsynced. A failure before that removes
the staging folder: nothing of a failed export is ever visible, and each final file appears
whole or not at all.

A new export replaces exactly the files the previous one wrote (its ``export.json``'s ``files``,
and the ``removing`` it had not finished): the new files are renamed into place, ``export.json``
last (it lists the new files, and as ``removing`` the previous ones it no longer writes), and only
then are those removed. Whenever it crashes, the ``export.json`` in place lists files that exist,
and the next export removes what is left. Nothing else in the folder is ever touched.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Sequence
from typing import IO, Any

from badc_mpi.storage.atomic import ensure_dir, fsync_dir, fsync_paths, temp_path_for


def field_text(value: Any, delimiter: str = ",") -> str:
    """One field as the ``csv`` module writes it with minimal quoting (None: empty; a text with
    the delimiter, a quote or a line break: quoted, its quotes doubled; as Python 3.12's ``csv``
    quotes), to build rows as text where millions are written."""
    text = "" if value is None else str(value)
    if delimiter in text or '"' in text or "\n" in text or "\r" in text:
        return '"' + text.replace('"', '""') + '"'
    return text


LISTING = "export.json"


def _inside(rel: str) -> bool:
    """A relative path below the export folder (never the listing itself, never above it)."""
    norm = os.path.normpath(rel)
    return bool(rel) and not os.path.isabs(rel) and norm != LISTING and not norm.startswith(("..", "."))


def previous_files(out_dir: str, schema: str) -> tuple[list[str], str | None]:
    """The files an earlier export wrote into ``out_dir`` (relative paths, from its
    ``export.json``), and a note when that listing could not be read (its files are then kept)."""
    path = os.path.join(out_dir, LISTING)
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        return [], None
    except (OSError, ValueError) as exc:
        return [], f"{path} unreadable ({exc}): the files of the earlier export were left in place"
    if not isinstance(doc, dict) or doc.get("schema") != schema:
        return [], f"{path} is not a badc-mpi export listing: the files beside it were left in place"
    names = [n for n in [*(doc.get("files") or []), *(doc.get("removing") or [])] if isinstance(n, str) and _inside(n)]
    return sorted(set(names)), None


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
        """Rows already formatted (:func:`field_text`) onto ``rel``, opened like :meth:`writer`."""
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

    def close(self) -> None:
        """Close the files still open (before they are read back; :meth:`commit` also does)."""
        self._close()

    def _close(self) -> None:
        for handle, _ in self._open.values():
            handle.close()
        self._open.clear()

    def commit(self, last: str | None = None, remove: Sequence[str] = ()) -> list[str]:
        """Make every file durable and rename it into place (``last``, e.g. ``export.json``, at
        the very end), then remove ``remove`` (relative paths: an earlier export's files that
        this one does not write) and the folders they leave empty; remove the staging folder.
        Returns the final paths."""
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
        self._remove([r for r in remove if r not in self.names and _inside(r)])
        shutil.rmtree(self.staging, ignore_errors=True)
        return done

    def _remove(self, names: Sequence[str]) -> None:
        folders: set[str] = set()
        for rel in names:
            path = os.path.join(self.out_dir, rel)
            if os.path.isfile(path) or os.path.islink(path):
                os.unlink(path)
                folders.add(os.path.dirname(path))
        for folder in sorted(folders, key=len, reverse=True):  # deepest first; empty ones only
            while folder != self.out_dir and folder.startswith(self.out_dir + os.sep):
                try:
                    os.rmdir(folder)
                except OSError:
                    break
                folder = os.path.dirname(folder)
        for folder in {self.out_dir, *(f for f in folders if os.path.isdir(f))}:
            fsync_dir(folder)

    def abort(self) -> None:
        """Remove the staging folder (and the output folder when this made it and it is empty)."""
        self._close()
        shutil.rmtree(self.staging, ignore_errors=True)
        if self._created:
            try:
                os.rmdir(self.out_dir)
            except OSError:
                pass
