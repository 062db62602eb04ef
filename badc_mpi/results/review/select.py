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

import hashlib
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from badc_mpi.results.review.errors import ReviewError

STRATA = ("score", "location", "hour", "none")
NEAR_SD = 0.1  #: the weight's standard deviation around the threshold (score units)
_P = 2147483647  #: 2^61 - 1 would need 128-bit products; keys stay in BIGINT arithmetic (fast)
_A1, _A2, _A3, _A4, _B = 1103515245, 1664525013, 2013265921, 48271, 12345
_M30 = (1 << 30) - 1
_M31 = (1 << 31) - 1

#: SQL for each stratum (constant text; no data pasted in)
_STRATUM_SQL = {
    "score": "CAST(least(floor(confidence * 10), 9) AS INTEGER)",
    "location": "coalesce(location, '')",
    "hour": "coalesce(substr(detection_start_local, 12, 2), '')",
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
    """Two masks from the seed (BLAKE2b of its decimal text): 62 and 31 bits."""
    digest = hashlib.blake2b(str(int(seed)).encode(), digest_size=16).digest()
    return int.from_bytes(digest[:8], "little") >> 2, int.from_bytes(digest[8:], "little") & _M31


def mixed(detection_id: int, seed: int) -> int:
    """``y`` in [0, P) of one detection for one seed, as the SQL computes it: ``z = id xor m1``;
    ``x = (lo30(z) * A1 + mid30(z) * A2 + (z >> 60) * A3) mod P``; ``y = ((x xor m2) * A4 + B) mod P``
    (every product below 2^62: BIGINT arithmetic)."""
    m1, m2 = seed_masks(seed)
    z = detection_id ^ m1
    x = ((z & _M30) * _A1 + ((z >> 30) & _M30) * _A2 + (z >> 60) * _A3) % _P
    return ((x ^ m2) * _A4 + _B) % _P


def uniform(detection_id: int, seed: int) -> float:
    """The pseudo-random uniform in (0, 1] of one detection for one seed: ``(y + 1) / (P + 1)``."""
    return (mixed(detection_id, seed) + 1) / (_P + 1)


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


def _query(strata: str, near: bool, columns: Sequence[str], all_species: bool, exclude: bool) -> str:
    """The draw's SQL, assembled from constant pieces only (every value is a parameter)."""
    stratum = _STRATUM_SQL[strata] if strata in ("score", "none") or strata_column(strata) in columns else "''"
    z = "xor(detection_id, $m1)"
    x = f"(({z} & {_M30}) * {_A1} + (({z} >> 30) & {_M30}) * {_A2} + ({z} >> 60) * {_A3}) % {_P}"
    y = f"((xor({x}, $m2) * {_A4} + {_B}) % {_P})"
    u = f"(({y} + 1)::DOUBLE / {_P + 1})"
    species = "coalesce(label_code, label)"
    where = [] if all_species else [f"{species} IN (SELECT unnest($species::VARCHAR[]))"]
    if exclude:
        where.append("detection_id NOT IN (SELECT unnest($exclude::BIGINT[]))")
    if near:
        weight = f"exp(-0.5 * pow((confidence - coalesce(t.threshold, $default)) / {NEAR_SD}, 2)) + 1e-12"
        key, order = f"-ln({u}) / ({weight})", "key"
        join = "LEFT JOIN (SELECT unnest($t_codes::VARCHAR[]) AS code, unnest($t_values::DOUBLE[]) AS threshold) t ON t.code = d.species"
    else:
        key, order, join = u, f"{y} * {1 << 31} + (detection_id & {_M31})", ""
    return f"""
WITH d AS (
  SELECT detection_id, {species} AS species, confidence, {stratum} AS stratum
  FROM read_parquet($path) {"WHERE " + " AND ".join(where) if where else ""}
), k AS (
  SELECT species, stratum, detection_id, {key} AS key, {order} AS ord FROM d {join}
)
SELECT species, stratum::VARCHAR AS stratum, min_by(struct_pack(id := detection_id, key := key), ord, $n) AS picks
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
        m1, m2 = seed_masks(sel.seed)
        params: dict[str, object] = {"path": parquet, "m1": m1, "m2": m2, "n": int(sel.per_species)}
        if not sel.all_species:
            params["species"] = list(sel.species)
        if exclude:
            params["exclude"] = sorted(set(exclude))
        if sel.near_threshold:
            params.update(t_codes=list(thresholds), t_values=[float(v) for v in thresholds.values()],
                          default=float(sel.default_threshold))  # fmt: skip
        sql = _query(sel.strata, sel.near_threshold, columns, sel.all_species, bool(exclude))
        rows = con.execute(sql, params).fetchall()
    finally:
        con.close()
    candidates = [
        Candidate(int(p["id"]), str(species), str(stratum), float(p["key"]))
        for species, stratum, picks in rows
        for p in picks
        if not math.isnan(float(p["key"]))
    ]
    return allocate(candidates, sel.per_species)
