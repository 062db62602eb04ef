"""Per-species calibration (pure): a logistic model of P(correct | score) from listeners'
verdicts, the threshold reaching a target precision, and a seeded bootstrap interval.

The model (docs/results.md, "Calibration"): ``P(correct | s) = 1 / (1 + exp(-(a + b * logit(s))))``
with ``logit(s) = ln(s / (1 - s))`` (the score clipped to [1e-4, 1 - 1e-4]), fitted by
scikit-learn's ``LogisticRegression`` (L2 penalty on the slope only, ``C = 100``: a weak ridge
that keeps the fit finite when correct and wrong verdicts separate perfectly). Scores go in as
logits because HawkEars' scores crowd near 0 and 1 (Wood & Kahl 2024 do the same for BirdNET).

**Precision, defined**: the threshold is the lowest score ``t`` whose fitted P(correct | t)
reaches the target: ``t = sigmoid((logit(target) - a) / b)``. Every detection kept (score >= t)
then has an estimated P(correct) of at least the target, so the expected precision of the kept
detections (the mean of their P(correct), shown in the report) is at least the target too.

The interval: ``bootstrap`` resamples of the species' verdicts (with replacement; numpy's
``default_rng`` seeded by ``seed`` and the species code, so a species' interval does not depend
on which other species were calibrated), each refitted with the same penalised objective by a
vectorised Newton solver (:func:`fit_many`; scikit-learn per resample would take minutes for a
campaign; ``tests/test_calibrate.py`` checks both fits agree), and the percentile interval of
their thresholds. A resample with only correct verdicts reads as threshold 0 (everything kept),
one with only wrong verdicts or a slope <= 0 as 1 (nothing kept).

No threshold (``reason`` says why, in plain words): fewer than ``min_verdicts`` correct + wrong
verdicts, all correct, none correct, all reviewed scores equal (the tiny model's), or P(correct)
not rising with the score.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

EPS = 1e-4  #: scores are clipped to [EPS, 1 - EPS] before the logit
RIDGE_C = 100.0  #: scikit-learn's C: the slope's L2 penalty is 1 / (2 C) * slope^2
MAX_ITER = 100


@dataclass(frozen=True)
class FitOptions:
    target_precision: float = 0.9
    min_verdicts: int = 20  #: correct + wrong verdicts needed for a threshold
    bootstrap: int = 1000  #: resamples for the interval (0: no interval)
    interval: float = 0.95  #: the interval's coverage
    seed: int = 0


@dataclass(frozen=True)
class SpeciesFit:
    """One species' calibration: a row of ``thresholds.csv``."""

    species_code: str
    threshold: float | None
    threshold_low: float | None
    threshold_high: float | None
    target_precision: float
    reviewed: int  #: verdicts given (correct + wrong + unsure)
    correct: int
    wrong: int
    unsure: int  #: counted, not fitted
    intercept: float | None
    slope: float | None
    min_score: float | None  #: lowest and highest reviewed score (correct or wrong)
    max_score: float | None
    reason: str  #: why there is no threshold (empty when there is one)
    note: str = ""  #: e.g. the threshold lies outside the reviewed scores (extrapolated)


def logit_scores(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    s = np.clip(np.asarray(scores, dtype=float), EPS, 1 - EPS)
    return np.log(s / (1 - s))


def p_correct(scores: Sequence[float] | np.ndarray, intercept: float, slope: float) -> np.ndarray:
    """The model's P(correct | score)."""
    return 1.0 / (1.0 + np.exp(-(intercept + slope * logit_scores(scores))))


def threshold_for(intercept: float, slope: float, target: float) -> float | None:
    """The lowest score whose P(correct) reaches ``target`` (None when the slope is not positive)."""
    if not slope > 0:
        return None
    x = (math.log(target / (1 - target)) - intercept) / slope
    return float(1.0 / (1.0 + math.exp(-x))) if x > -700 else 0.0


def fit_point(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(intercept, slope) of the penalised logistic fit of outcomes ``y`` (1 correct, 0 wrong) on
    logit scores ``x``, by scikit-learn."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=RIDGE_C, solver="newton-cholesky", tol=1e-10, max_iter=MAX_ITER)
    model.fit(x.reshape(-1, 1), y.astype(int))
    return float(model.intercept_[0]), float(model.coef_[0, 0])


def fit_many(
    x: np.ndarray, y: np.ndarray, weights: np.ndarray, c: float = RIDGE_C, start: tuple[float, float] = (0.0, 0.0)
) -> tuple[np.ndarray, np.ndarray]:
    """The same penalised fit for each row of ``weights`` (B x n case weights: bootstrap counts),
    all at once by Newton's method with closed-form 2 x 2 steps, from ``start`` (the point fit:
    a few steps), each row until its step is below 1e-5 (Newton converges quadratically: the
    error left is then ~1e-10); rows whose weighted outcomes are all one class have no finite
    fit and are left at ``start`` (the caller replaces them)."""
    n_rows = weights.shape[0]
    a, b = np.full(n_rows, float(start[0])), np.full(n_rows, float(start[1]))
    lam = 1.0 / c
    correct, total = weights @ y, weights.sum(1)
    active = np.flatnonzero((correct > 0) & (correct < total))  # one-class rows have no finite fit: left at start
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for _ in range(MAX_ITER):
            w = weights[active]
            eta = np.clip(a[active, None] + b[active, None] * x[None, :], -35, 35)
            p = 1.0 / (1.0 + np.exp(-eta))
            r = w * (p - y[None, :])
            wv = w * p * (1 - p)
            wvx = wv * x
            g_a, g_b = r.sum(1), r @ x + lam * b[active]
            h_aa, h_ab, h_bb = wv.sum(1), wvx.sum(1), wvx @ x + lam
            det = h_aa * h_bb - h_ab * h_ab
            ok = det > 0
            d_a = np.where(ok, (h_bb * g_a - h_ab * g_b) / np.where(ok, det, 1.0), 0.0)
            d_b = np.where(ok, (h_aa * g_b - h_ab * g_a) / np.where(ok, det, 1.0), 0.0)
            d_a, d_b = np.clip(np.nan_to_num(d_a), -5, 5), np.clip(np.nan_to_num(d_b), -5, 5)
            a[active] -= d_a
            b[active] -= d_b
            active = active[np.maximum(np.abs(d_a), np.abs(d_b)) >= 1e-5]
            if not len(active):
                break
    return a, b


def species_rng(seed: int, species_code: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(species_code.encode("utf-8"))])


def bootstrap_thresholds(
    x: np.ndarray, y: np.ndarray, options: FitOptions, rng: np.random.Generator, start: tuple[float, float] = (0.0, 0.0)
) -> np.ndarray:
    """The thresholds of ``options.bootstrap`` resamples (see the module doc for one-class resamples)."""
    n = len(x)
    draws = rng.integers(0, n, size=(options.bootstrap, n)) + n * np.arange(options.bootstrap)[:, None]
    counts = np.bincount(draws.ravel(), minlength=options.bootstrap * n).reshape(options.bootstrap, n).astype(float)
    a, b = fit_many(x, y, counts, start=start)
    z = math.log(options.target_precision / (1 - options.target_precision))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        t = 1.0 / (1.0 + np.exp(-np.clip((z - a) / b, -700, 700)))
    t = np.where(b > 0, t, 1.0)
    correct = counts @ y
    t = np.where(correct == 0, 1.0, t)
    return np.where(correct == counts.sum(1), 0.0, t)


def fit_species(
    species_code: str, scores: Iterable[float], outcomes: Iterable[bool], unsure: int, options: FitOptions
) -> SpeciesFit:
    """One species from its correct/wrong verdicts' scores and outcomes (True: correct)."""
    s = np.asarray(list(scores), dtype=float)
    y = np.asarray(list(outcomes), dtype=float)
    n_correct, n_wrong = int(y.sum()), int(len(y) - y.sum())
    base = SpeciesFit(
        species_code, None, None, None, options.target_precision, len(y) + unsure, n_correct, n_wrong, unsure, None, None,
        float(s.min()) if len(s) else None, float(s.max()) if len(s) else None, reason="",
    )  # fmt: skip
    if len(y) < options.min_verdicts:
        why = f"too few verdicts: {len(y)} correct or wrong (unsure not counted), {options.min_verdicts} needed"
        return replace(base, reason=why)
    if n_wrong == 0:
        return replace(base, reason=f"all {n_correct} verdicts correct: no wrong detection to fit (scores from {s.min():.3f})")
    if n_correct == 0:
        return replace(base, reason=f"none of {n_wrong} verdicts correct: no score reaches the target")
    if s.max() - s.min() < 1e-6:
        return replace(
            base, reason=f"all {len(y)} reviewed scores are equal ({s.min():.3f}): the score cannot tell correct from wrong"
        )
    x = logit_scores(s)
    a, b = fit_point(x, y)
    t = threshold_for(a, b, options.target_precision)
    if t is None:
        return replace(base, intercept=a, slope=b, reason="P(correct) does not rise with the score: no threshold")
    low = high = None
    if options.bootstrap > 0:
        boot = bootstrap_thresholds(x, y, options, species_rng(options.seed, species_code), (a, b))
        tail = (1 - options.interval) / 2 * 100
        low, high = (float(v) for v in np.percentile(boot, [tail, 100 - tail]))
    note = ""
    if t > s.max() or t < s.min():
        note = f"threshold outside the reviewed scores ({s.min():.3f}..{s.max():.3f}): extrapolated"
    return replace(base, threshold=t, threshold_low=low, threshold_high=high, intercept=a, slope=b, note=note)
