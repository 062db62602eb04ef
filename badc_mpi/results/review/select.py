"""Which detections a review round draws (seeded, stratified, never one already drawn).

One DuckDB query over the bundle's ``detections.parquet`` (columns read: id, species, score and
the stratum's column; 100M rows stream through a hash aggregate, no sort of the campaign): each
detection gets a key from its ``detection_id`` and the seed, a pseudo-random uniform ``u`` in
(0, 1) (:func:`uniform`); ``min_by(detection_id, key, N)`` keeps the N smallest keys per species and stratum. Round
one: ``key = u`` (a uniform draw). ``--near-threshold``: ``key = -ln(u) / w`` with ``w`` a Gaussian
weight on ``|score - threshold|`` (sd :data:`NEAR_SD`), the Efraimidis-Spirakis weighted draw
without replacement, so scores near the species' threshold are drawn most. Then, per species,
strata take turns (sorted by name, each its smallest key first) until N are chosen
(:func:`allocate`, pure): equal shares, the rest from strata with more.

Strata: ``score`` (bands of 0.1), ``location`` (the manifest's ``location``), ``hour`` (local hour
of the detection), ``none``. Because the key hangs on ``detection_id`` only, the same bundle,
seed and options draw the same detections, and so does a rebuilt bundle.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from badc_mpi.results.review.errors import ReviewError

STRATA = ("score", "location", "hour", "none")
NEAR_SD = 0.1  #: the weight's standard deviation around the threshold (score units)
_PRIME = 2305843009213693951  #: 2^61 - 1
_A, _C = 6364136223846793005, 1442695040888963407

#: SQL for each stratum (constant text; no data pasted in)
_STRATUM_SQL = {
    "score": "CAST(least(floor(confidence * 10), 9) AS INTEGER)::VARCHAR",
    "location": "coalesce(CAST(location AS VARCHAR), '')",
    "hour": "coalesce(substr(CAST(detection_start_local AS VARCHAR), 12, 2), '')",
    "none": "''",
}


@dataclass(frozen=True)
class Selection:
    """What to draw: species codes (empty with ``all_species``), N per species, stratum, seed."""

    species: tuple[str, ...] = ()
    all_species: bool = False
    per_species: int = 50
    strata: str = "score"
    seed: int = 0
    near_threshold: bool = False
    thresholds: tuple[tuple[str, float], ...] = ()  #: (species code, threshold) for --near-threshold
    default_threshold: float = 0.0  #: species without a threshold (the bundle's min confidence)

    def check(self) -> None:
        if not self.species and not self.all_species:
            raise ReviewError("no species chosen", fix="give --species CODE[,CODE...] or --all-species")
        if self.per_species < 1:
            raise ReviewError(f"--per-species {self.per_species} is below 1", fix="give a count such as 50")
        if self.strata not in STRATA:
            raise ReviewError(f"--strata {self.strata!r} is not a stratum", fix=f"use one of: {', '.join(STRATA)}")


@dataclass(frozen=True)
class Candidate:
    detection_id: int
    species_code: str
    stratum: str
    key: float


def seed_masks(seed: int) -> tuple[int, int]:
    """Two 62-bit masks from the seed (BLAKE2b of its decimal text)."""
    digest = hashlib.blake2b(str(int(seed)).encode(), digest_size=16).digest()
    return int.from_bytes(digest[:8], "little") >> 2, int.from_bytes(digest[8:], "little") >> 2


def uniform(detection_id: int, seed: int) -> float:
    """The pseudo-random uniform in (0, 1) of one detection for one seed, as the SQL computes it:
    ``x = ((id xor m1) * A) mod P``, ``u = (((x xor m2) * C) mod P + 1) / (P + 1)``."""
    m1, m2 = seed_masks(seed)
    x = ((detection_id ^ m1) * _A) % _PRIME
    return (((x ^ m2) * _C) % _PRIME + 1) / (_PRIME + 1)


def allocate(candidates: Iterable[Candidate], per_species: int) -> list[Candidate]:
    """Per species, strata take turns (by name), each giving its smallest key first, until
    ``per_species`` are chosen or all are used (pure). Output: by species, then draw order."""
    by_species: dict[str, dict[str, list[Candidate]]] = {}
    for c in candidates:
        by_species.setdefault(c.species_code, {}).setdefault(c.stratum, []).append(c)
    out: list[Candidate] = []
    for species in sorted(by_species):
        queues = [sorted(q, key=lambda c: (c.key, c.detection_id)) for _, q in sorted(by_species[species].items())]
        taken, depth = 0, 0
        while taken < per_species and any(depth < len(q) for q in queues):
            for q in queues:
                if depth < len(q) and taken < per_species:
                    out.append(q[depth])
                    taken += 1
            depth += 1
    return out


def read_thresholds(path: str) -> dict[str, float]:
    """``thresholds.csv`` (``species_code,threshold``; other columns ignored, empty thresholds skipped)."""
    out: dict[str, float] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"species_code", "threshold"} <= set(reader.fieldnames):
            raise ReviewError(f"{path}: no species_code,threshold header", fix="write it with `badc-mpi calibrate`")
        for n, row in enumerate(reader, start=2):
            text = (row.get("threshold") or "").strip()
            if not text:
                continue
            try:
                out[row["species_code"]] = float(text)
            except ValueError:
                raise ReviewError(f"{path}, row {n}: threshold {text!r} is not a number", fix="give a score 0..1") from None
    return out


def _query(strata: str, near: bool, columns: Sequence[str]) -> str:
    stratum = _STRATUM_SQL[strata] if strata in ("score", "none") or strata_column(strata) in columns else "''"
    x = f"((xor(d.detection_id, $m1)::HUGEINT * {_A}) % {_PRIME})::BIGINT"
    u = f"((xor({x}, $m2)::HUGEINT * {_C}) % {_PRIME} + 1)::DOUBLE / {_PRIME + 1}"
    if near:
        weight = f"exp(-0.5 * pow((d.confidence - coalesce(t.threshold, $default)) / {NEAR_SD}, 2)) + 1e-12"
        key = f"-ln({u}) / ({weight})"
    else:
        key = u
    return f"""
WITH d AS (
  SELECT detection_id, coalesce(CAST(label_code AS VARCHAR), CAST(label AS VARCHAR)) AS species, confidence,
         {stratum} AS stratum
  FROM read_parquet($path)
  WHERE coalesce(CAST(label_code AS VARCHAR), CAST(label AS VARCHAR)) IN (SELECT unnest($species::VARCHAR[]))
     OR $all_species
), k AS (
  SELECT d.species, d.stratum, d.detection_id, {key} AS key
  FROM d LEFT JOIN (SELECT unnest($t_codes::VARCHAR[]) AS code, unnest($t_values::DOUBLE[]) AS threshold) t
    ON t.code = d.species
  WHERE d.detection_id NOT IN (SELECT unnest($exclude::BIGINT[]))
)
SELECT species, stratum, min_by(struct_pack(id := detection_id, key := key), key, $n) AS picks
FROM k GROUP BY species, stratum
"""


def strata_column(strata: str) -> str:
    return {"location": "location", "hour": "detection_start_local"}.get(strata, "confidence")


def draw(parquet: str, sel: Selection, exclude: Sequence[int] = ()) -> list[Candidate]:
    """The detections of one round (see the module doc), by species then draw order."""
    import duckdb
    import pyarrow.parquet as pq

    sel.check()
    columns = pq.read_schema(parquet).names
    thresholds = dict(sel.thresholds)
    con = duckdb.connect(config={"memory_limit": "1GB", "threads": os.cpu_count() or 1})
    try:
        params: dict[str, object] = {
            "path": parquet,
            "species": list(sel.species),
            "all_species": sel.all_species,
            "exclude": sorted(set(exclude)),
            "t_codes": list(thresholds),
            "t_values": [float(v) for v in thresholds.values()],
            "m1": seed_masks(sel.seed)[0],
            "m2": seed_masks(sel.seed)[1],
            "n": int(sel.per_species),
        }
        if sel.near_threshold:
            params["default"] = float(sel.default_threshold)
        rows = con.execute(_query(sel.strata, sel.near_threshold, columns), params).fetchall()
    finally:
        con.close()
    candidates = [
        Candidate(int(p["id"]), str(species), str(stratum), float(p["key"]))
        for species, stratum, picks in rows
        for p in picks
        if not math.isnan(float(p["key"]))
    ]
    return allocate(candidates, sel.per_species)
