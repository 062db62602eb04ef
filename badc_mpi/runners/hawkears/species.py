"""Species a person names (``--focus-species``, ``--include``/``--exclude`` lists) checked against a
HawkEars data root's taxonomy, so that a typo is an error and never a false absence.

The taxonomy is what HawkEars itself reads: ``data/taxonomy.csv`` then ``data/classes.csv`` of the
data root (:func:`~badc_mpi.storage.detections.load_class_labels`): every code, common name,
scientific (alt) name and alt code maps to its code. Codes are matched case-blind; a common or
scientific name is accepted and mapped to its code (said in a note); anything else is a
:class:`~badc_mpi.errors.UsageError` (exit 2) listing the nearest codes and names (difflib).
Pure but for :func:`load_taxonomy`.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from badc_mpi.errors import UsageError
from badc_mpi.storage.detections import load_class_labels


@dataclass(frozen=True)
class Taxonomy:
    """A data root's species: every label form (lower-case) -> code, and code -> common name."""

    source: str  #: the data folder read (for messages)
    forms: dict[str, str] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    exact: frozenset[str] = frozenset()  #: the label forms as written (HawkEars' lists match these exactly)


def taxonomy_from(class_map: dict[str, str], names: dict[str, str], source: str) -> Taxonomy:
    forms = {label.lower(): code for label, code in class_map.items()}
    return Taxonomy(source, forms, dict(names), frozenset(class_map))


def load_taxonomy(data_root: str) -> Taxonomy | None:
    """The taxonomy of ``data_root`` (a HawkEars data root, or its ``data/`` folder); None without one."""
    folder = os.path.join(data_root, "data") if os.path.isdir(os.path.join(data_root, "data")) else data_root
    found = load_class_labels(folder)
    return taxonomy_from(*found, source=folder) if found else None


def nearest(word: str, taxonomy: Taxonomy, n: int = 4) -> list[str]:
    """The nearest codes (and names, shown as ``CODE (name)``) to ``word``."""
    picks = difflib.get_close_matches(word.lower(), list(taxonomy.forms), n=n, cutoff=0.5)
    shown: list[str] = []
    for form in picks:
        code = taxonomy.forms[form]
        label = f"{code} ({taxonomy.names[code]})" if taxonomy.names.get(code) else code
        if label not in shown:
            shown.append(label)
    return shown


def resolve_species(given: Sequence[str], taxonomy: Taxonomy, what: str) -> tuple[list[str], list[str]]:
    """(the codes of ``given``, in order, each once; notes for names mapped to codes); UsageError
    naming every unknown one with its nearest codes. ``what``: the option, for messages."""
    codes: list[str] = []
    notes: list[str] = []
    unknown: list[str] = []
    for word in (w.strip() for w in given):
        if not word:
            continue
        code = taxonomy.forms.get(word.lower())
        if code is None:
            unknown.append(word)
            continue
        if word.upper() != code:
            notes.append(f"{what}: {word!r} read as {code}")
        if code not in codes:
            codes.append(code)
    if unknown:
        parts = []
        for word in unknown:
            close = nearest(word, taxonomy)
            parts.append(f"{word!r}" + (f" (nearest: {', '.join(close)})" if close else ""))
        raise UsageError(
            f"{what}: unknown species {'; '.join(parts)} (taxonomy: {taxonomy.source})",
            fix="give 4-letter codes or common names as in that folder's classes.csv (e.g. OVEN or Ovenbird)",
        )
    return codes, notes


def check_list_file(path: str, taxonomy: Taxonomy, what: str) -> None:
    """A HawkEars ``--include``/``--exclude`` file (one name or code a line, matched exactly by
    HawkEars): UsageError naming the file, line and nearest labels for a line HawkEars would not match."""
    try:
        with open(path, encoding="utf-8-sig") as handle:
            lines = [line.strip() for line in handle]
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{what} {path}: cannot be read ({exc})", fix="give a UTF-8 text file, one species a line") from None
    for number, line in enumerate(lines, start=1):
        if not line or line in taxonomy.exact:
            continue
        code = taxonomy.forms.get(line.lower())
        hint = f" (did you mean {code!r}?)" if code else ""
        close = "" if code else " (nearest: " + (", ".join(nearest(line, taxonomy)) or "none") + ")"
        raise UsageError(
            f"{what} {path}, line {number}: {line!r} is no species of the taxonomy {taxonomy.source}{hint}{close}",
            fix="write each species as its code or common name, exactly as in that folder's classes.csv",
        )
