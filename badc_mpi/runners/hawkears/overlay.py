"""A HawkEars *overlay*: HawkEars and the packages it lacks, installed from wheels into one folder
on top of an existing Python that already has torch (a GPU machine without internet, where
``make hawkears`` cannot build HawkEars' own environment).

Pure planning only (standard library, plus ``packaging`` when present for markers and specifiers);
``scripts/hawkears/hawkears_overlay.py`` does the downloading, installing and checking:

- which distributions to fetch: HawkEars' pins (``vendor/HawkEars/requirements.txt``) and their
  dependencies, walked from each downloaded wheel's ``Requires-Dist``, minus what the target python
  already has (a *have* list, whatever its versions: torch, numpy, scipy, ... stay the target's)
  and minus :data:`LEFT_OUT`, what HawkEars never imports to score audio (its GUI, britekit's
  training and data-gathering extras); :func:`to_fetch`;
- how to split the wheels into parts of at most N MiB, one part per transfer; :func:`split_parts`;
- the wrapper ``OVERLAY/bin/python`` and the console-script header that run the target python
  with the overlay first on its path; :func:`wrapper_text`, :func:`script_header`;
- the import check run through the wrapper and its one-line verdict; :data:`CHECK_CODE`,
  :func:`check_verdict`.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

MIB = 1 << 20
DEFAULT_PART_MIB = 60
#: distributions HawkEars 2.3.0 / britekit 1.8.4 declare but never import to score audio or to
#: build the tiny model (measured: the modules loaded by the resident worker, `hawkears analyze`
#: and scripts/hawkears/build_tiny_model.py): the Qt GUI, FAISS search, ONNX export, TensorBoard logging,
#: iNaturalist and YouTube downloads. Leaving them out saves ~0.8 GB; ``--include NAME`` keeps one.
LEFT_OUT = frozenset(
    {
        "pyside6",
        "pyside6-essentials",
        "pyside6-addons",
        "shiboken6",
        "faiss-cpu",
        "onnx",
        "tensorboard",
        "pyinaturalist",
        "yt-dlp",
    }
)
#: what the import check imports through the wrapper: torch, the pinned packages, then the modules
#: badc-mpi's resident worker, `hawkears analyze` and the tiny-model builder use
CHECK_MODULES = (
    "torch",
    "hawkears",
    "britekit",
    "hawkears.core.analyzer",
    "hawkears.commands._analyze",
    "hawkears.cli",
    "britekit.core.audio",
    "britekit.core.predictor",
    "britekit.models.model_loader",
    "lightning",
)
#: the target's environment for PEP 508 markers (a CPython on Linux x86-64)
_MARKER_ENV = {
    "os_name": "posix",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "implementation_name": "cpython",
}


def canonical(name: str) -> str:
    """PEP 503 normalised name: ``PySide6_Essentials`` -> ``pyside6-essentials``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_have(text: str) -> tuple[dict[str, str | None], str | None]:
    """A *have* list (``pip freeze`` lines ``name==version``, or bare names; ``#`` comments) ->
    ({canonical name: version or None}, the Python version from a ``# python=X.Y.Z`` line)."""
    have: dict[str, str | None] = {}
    python = None
    for raw in text.splitlines():
        line = raw.strip()
        found = re.match(r"#\s*python=(\d+\.\d+(?:\.\d+)?)", line)
        if found:
            python = found.group(1)
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        name, _, version = line.partition("==")
        name = re.split(r"[\s@<>=!~;\[]", name, maxsplit=1)[0]
        if name:
            have[canonical(name)] = version.strip() or None
    return have, python


def have_text(dists: Mapping[str, str], python: str) -> str:
    """The *have* file a target python writes about itself (``hawkears_overlay.py have``)."""
    lines = [f"# python={python}", *(f"{n}=={v}" for n, v in sorted(dists.items(), key=lambda kv: canonical(kv[0])))]
    return "\n".join(lines) + "\n"


def parse_pins(text: str) -> dict[str, str]:
    """``name==version`` lines of a requirements file -> {canonical name: version}."""
    pins = {}
    for line in text.splitlines():
        found = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;#]+)", line)
        if found:
            pins[canonical(found.group(1))] = found.group(2)
    return pins


@dataclass(frozen=True)
class Req:
    """One ``Requires-Dist`` entry that applies to the target (extras and false markers dropped)."""

    name: str  #: canonical
    spec: str  #: the version specifier, e.g. ``>=1.8.4,<1.9`` ('' for any)

    def pip_arg(self, pins: Mapping[str, str]) -> str:
        """What ``pip download`` is given: the pinned version when there is one, else the spec."""
        return f"{self.name}=={pins[self.name]}" if self.name in pins else f"{self.name}{self.spec}"


def parse_requires(lines: Iterable[str], python_version: str) -> list[Req]:
    """``Requires-Dist`` values -> the requirements that apply on the target python (no extras)."""
    out = []
    for line in lines:
        body, _, marker = line.partition(";")
        if marker.strip() and not marker_true(marker.strip(), python_version):
            continue
        found = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*\(?([^)]*)\)?", body)
        if found:
            out.append(Req(canonical(found.group(1)), re.sub(r"\s+", "", found.group(3))))
    return out


def marker_true(marker: str, python_version: str) -> bool:
    """Evaluate a PEP 508 marker for the target (``extra`` markers are false: no extras wanted)."""
    if "extra" in re.findall(r"[A-Za-z_]+", marker):
        return False
    major_minor = ".".join(python_version.split(".")[:2])
    full = python_version if python_version.count(".") == 2 else f"{python_version}.0"
    env = dict(_MARKER_ENV, python_version=major_minor, python_full_version=full, extra="")
    try:
        from packaging.markers import Marker
    except ImportError:  # no packaging: keep the requirement (a spare wheel is harmless)
        return True
    return Marker(marker).evaluate(env)


def satisfies(version: str | None, spec: str) -> bool | None:
    """Whether ``version`` meets ``spec``; None when unknown (no version, no ``packaging``)."""
    if version is None or not spec:
        return None if version is None and spec else True
    try:
        from packaging.specifiers import InvalidSpecifier, SpecifierSet
        from packaging.version import InvalidVersion
    except ImportError:
        return None
    try:
        return SpecifierSet(spec).contains(version, prereleases=True)
    except (InvalidSpecifier, InvalidVersion):
        return None


@dataclass(frozen=True)
class Step:
    """What one round of the walk decides: requirements to download, and notes about the rest."""

    fetch: tuple[Req, ...]
    notes: tuple[str, ...]


def to_fetch(
    reqs: Iterable[tuple[str, Req]],
    have: Mapping[str, str | None],
    fetched: Mapping[str, str],
    *,
    left_out: Iterable[str] = LEFT_OUT,
    include: Iterable[str] = (),
) -> Step:
    """Given requirements ``(who needs it, Req)``, the target's distributions and what was already
    fetched ({name: version}), decide which to download. The target's own copy always wins (its
    version is noted when it does not meet the spec); ``left_out`` are skipped unless in
    ``include``, which also overrides ``have``."""
    include = {canonical(n) for n in include}
    left = {canonical(n) for n in left_out} - include
    fetch: dict[str, Req] = {}
    notes = []
    for who, req in reqs:
        if req.name in fetched:
            if satisfies(fetched[req.name], req.spec) is False:
                notes.append(f"{who} wants {req.name}{req.spec}; the wheel fetched is {fetched[req.name]}")
            continue
        if req.name in have and req.name not in include:
            if satisfies(have[req.name], req.spec) is False:
                notes.append(f"the target's {req.name} {have[req.name]} is outside {who}'s {req.spec} (kept: it is the target's)")
            continue
        if req.name in left:
            notes.append(f"left out: {req.name} (wanted by {who}; never imported to score audio)")
            continue
        fetch.setdefault(req.name, req)
    return Step(tuple(fetch.values()), tuple(dict.fromkeys(notes)))


def wheel_name(filename: str) -> tuple[str, str]:
    """``polars_runtime_32-1.44.2-cp39-abi3-manylinux...whl`` -> ('polars-runtime-32', '1.44.2')."""
    parts = filename.split("-")
    if not filename.endswith(".whl") or len(parts) < 5:
        raise ValueError(f"not a wheel file name: {filename}")
    return canonical(parts[0]), parts[1]


def split_parts(sizes: Mapping[str, int], limit_bytes: int) -> list[list[str]]:
    """Files into as few parts of at most ``limit_bytes`` each as first-fit-decreasing finds,
    each part sorted by name; ValueError naming any file larger than the limit."""
    too_big = sorted(n for n, s in sizes.items() if s > limit_bytes)
    if too_big:
        raise ValueError(
            f"{', '.join(too_big)} {'is' if len(too_big) == 1 else 'are'} larger than a part "
            f"({limit_bytes / MIB:.0f} MiB): raise --part-mib, or carry it alone"
        )
    parts: list[list[str]] = []
    room: list[int] = []
    for name in sorted(sizes, key=lambda n: (-sizes[n], n)):
        for i, left in enumerate(room):
            if sizes[name] <= left:
                parts[i].append(name)
                room[i] -= sizes[name]
                break
        else:
            parts.append([name])
            room.append(limit_bytes - sizes[name])
    return [sorted(p) for p in parts]


def wrapper_text(python: str, overlay: str) -> str:
    """``OVERLAY/bin/python``: the target python with the overlay first on ``sys.path``.

    badc-mpi drops ``PYTHONPATH`` from HawkEars' environment, so the wrapper sets it (ahead of any
    inherited one); children started with ``sys.executable`` inherit it through the environment."""
    return (
        "#!/bin/sh\n"
        "# HawkEars overlay (scripts/hawkears/hawkears_overlay.py): this python with the overlay first on its path\n"
        f"PYTHONPATH={shlex.quote(overlay)}${{PYTHONPATH:+:$PYTHONPATH}}\n"
        "export PYTHONPATH\n"
        f'exec {shlex.quote(python)} "$@"\n'
    )


def script_header(wrapper: str) -> str:
    """The first lines a console script in ``OVERLAY/bin`` gets instead of pip's ``#!/base/python``
    (sh then the wrapper runs the rest as Python; works for paths with spaces, like pip's own)."""
    return f"#!/bin/sh\n'''exec' {shlex.quote(wrapper)} \"$0\" \"$@\"\n' '''\n"


#: run through the wrapper: ``python -c CHECK_CODE VERSION MODULE...``; prints one JSON line
CHECK_CODE = r"""
import importlib, json, sys
want, mods = sys.argv[1], sys.argv[2:]
out = {"python": sys.version.split()[0], "missing": [], "versions": {}}
for mod in mods:
    try:
        m = importlib.import_module(mod)
    except Exception as exc:
        out["missing"].append([mod, getattr(exc, "name", None) or "", f"{type(exc).__name__}: {exc}"[:300]])
        continue
    if "." not in mod:
        out["versions"][mod] = getattr(m, "__version__", None)
out["want"] = want
print(json.dumps(out))
"""


def check_verdict(result: Mapping, wrapper: str, hawkears_version: str) -> str | None:
    """None when the check passed, else ONE line naming what is missing and the fix."""
    missing = result.get("missing") or []
    if any(mod == "torch" for mod, _, _ in missing):
        why = next(err for mod, _, err in missing if mod == "torch")
        return (
            f"{wrapper}: the base python has no usable torch ({why}). Fix: build the overlay on a python "
            "that has torch (britekit 1.8.4 needs torch<2.12), e.g. PYTHON=/path/to/python3"
        )
    if missing:
        names = sorted({(lacks or mod).split(".")[0] for mod, lacks, _ in missing})
        first = missing[0]
        return (
            f"{wrapper}: cannot import {', '.join(m for m, _, _ in missing)} (missing: {', '.join(names)}; "
            f"first error: {first[2]}). Fix: add the wheels for {', '.join(names)} "
            f"(make hawkears-wheels INCLUDE='{' '.join(names)}' HAVE=<the target's have file>), carry them, "
            "and run hawkears_overlay.py install again"
        )
    got = (result.get("versions") or {}).get("hawkears")
    if got != hawkears_version:
        return (
            f"{wrapper}: hawkears is {got}, badc-mpi needs {hawkears_version}. Fix: download the pinned "
            f"wheels again (make hawkears-wheels) and reinstall the overlay"
        )
    return None
