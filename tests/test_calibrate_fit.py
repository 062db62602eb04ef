"""Per-species calibration, pure: a known threshold recovered within its bootstrap interval, the
bootstrap's own solver agreeing with scikit-learn, seeded intervals, plain reasons where no
threshold can be estimated, and verdict files checked row by row."""

from __future__ import annotations

import numpy as np
import pytest

from badc_mpi.results.calibrate.fit import FitOptions, fit_many, fit_point, fit_species, logit_scores, p_correct, threshold_for
from badc_mpi.results.calibrate.verdicts import Detection, check_verdicts, parse_verdicts
from badc_mpi.results.export.meta import ExportError
from badc_mpi.results.export.thresholds import parse_thresholds


def _synthetic(n: int, intercept: float, slope: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = rng.uniform(0.02, 0.99, n)
    return scores, rng.random(n) < p_correct(scores, intercept, slope)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_known_threshold_is_recovered_within_its_interval(seed):
    a, b = -0.5, 2.0  # P(correct) = 0.9 at logit(s) = (ln 9 + 0.5) / 2: s ~ 0.794
    truth = threshold_for(a, b, 0.9)
    assert truth is not None and 0.79 < truth < 0.80
    scores, correct = _synthetic(400, a, b, seed)
    fit = fit_species("RUGR", scores, correct, 7, FitOptions(bootstrap=400, seed=seed))
    assert fit.reason == "" and fit.threshold is not None and fit.threshold_low is not None and fit.threshold_high is not None
    assert fit.threshold_low <= truth <= fit.threshold_high
    assert fit.threshold_low < fit.threshold < fit.threshold_high and fit.threshold_high - fit.threshold_low < 0.15
    assert (fit.reviewed, fit.unsure, fit.correct + fit.wrong) == (407, 7, 400) and fit.correct == int(correct.sum())


def test_the_bootstrap_solver_fits_what_scikit_learn_fits():
    scores, correct = _synthetic(120, 0.3, 1.4, 5)
    x, y = logit_scores(scores), correct.astype(float)
    a, b = fit_point(x, y)
    weights = np.vstack([np.ones(len(x)), np.random.default_rng(0).multinomial(len(x), np.full(len(x), 1 / len(x)))])
    ma, mb = fit_many(x, y, weights.astype(float))
    assert ma[0] == pytest.approx(a, abs=1e-6) and mb[0] == pytest.approx(b, abs=1e-6)
    a2, b2 = fit_point(np.repeat(x, weights[1].astype(int)), np.repeat(y, weights[1].astype(int)))
    assert ma[1] == pytest.approx(a2, abs=1e-5) and mb[1] == pytest.approx(b2, abs=1e-5)


def test_perfect_separation_still_gives_a_finite_threshold_between_the_classes():
    scores = np.r_[np.linspace(0.05, 0.45, 15), np.linspace(0.6, 0.95, 15)]
    fit = fit_species("OVEN", scores, scores > 0.5, 0, FitOptions(bootstrap=200))
    assert fit.threshold is not None and 0.45 < fit.threshold < 0.6 and fit.slope is not None and np.isfinite(fit.slope)


def test_intervals_are_seeded_per_species():
    scores, correct = _synthetic(80, -0.5, 2.0, 9)
    one = fit_species("RUGR", scores, correct, 0, FitOptions(bootstrap=300, seed=4))
    again = fit_species("RUGR", scores, correct, 0, FitOptions(bootstrap=300, seed=4))
    other = fit_species("RUGR", scores, correct, 0, FitOptions(bootstrap=300, seed=5))
    assert (one.threshold_low, one.threshold_high) == (again.threshold_low, again.threshold_high)
    assert (one.threshold_low, one.threshold_high) != (other.threshold_low, other.threshold_high)


@pytest.mark.parametrize(
    "scores,correct,needle",
    [
        ([0.5] * 10, [True, False] * 5, "too few verdicts: 10 correct or wrong"),
        (list(np.linspace(0.1, 0.9, 30)), [True] * 30, "all 30 verdicts correct"),
        (list(np.linspace(0.1, 0.9, 30)), [False] * 30, "none of 30 verdicts correct"),
        (list(np.linspace(0.1, 0.9, 30)), [s < 0.5 for s in np.linspace(0.1, 0.9, 30)], "does not rise with the score"),
        ([0.77] * 30, [True, False] * 15, "all 30 reviewed scores are equal (0.770)"),
    ],
)
def test_no_threshold_comes_with_a_plain_reason(scores, correct, needle):
    fit = fit_species("WIPT", scores, correct, 2, FitOptions(bootstrap=50))
    assert fit.threshold is None and fit.threshold_low is None and needle in fit.reason


def test_verdict_files_are_checked_row_by_row():
    problems: list[str] = []
    data = (
        b"detection_id,species_code,verdict,clip\n"
        b"11,RUGR,correct,a.flac\n"
        b"12,RUGR,Maybe,b.flac\n"
        b"13,RUGR,,c.flac\n"  # not reviewed yet: skipped
        b"14,OVEN,WRONG,d.flac\n"
        b"11,RUGR,wrong,a.flac\n"
        b"99,RUGR,unsure,e.flac\n"
        b"15,OVEN,unsure,f.flac\n"
    )
    vf = parse_verdicts("v.csv", data, problems)
    assert problems == ["v.csv, row 3: verdict 'Maybe' is not one of correct, wrong, unsure"] and vf.blank == 1
    known = {"11": Detection("RUGR", 0.8), "14": Detection("RUGR", 0.3), "15": Detection("OVEN", 0.4)}
    kept, found = check_verdicts(vf.verdicts, known)
    assert found == [
        "v.csv, row 5: detection_id '14' is a RUGR detection in the bundle, not OVEN",
        "v.csv, row 6: detection_id '11' is 'wrong' here but 'correct' in v.csv, row 2",
        "v.csv, row 7: detection_id '99' is not in the bundle",
    ]
    assert [(v.detection_id, v.verdict) for v in kept] == [("11", "correct"), ("15", "unsure")]
    parse_verdicts("w.csv", b"id,verdict\n1,correct\n", problems)
    assert (
        problems[-1]
        == "w.csv, row 1: no detection_id, species_code column (the header needs detection_id, species_code, verdict)"
    )


def test_a_thresholds_file_is_read_or_refused_by_row():
    thr = parse_thresholds("t.csv", b"species_code,threshold,reason\nRUGR,0.8,\nOVEN,,too few verdicts\n")
    assert thr.by_species == {"RUGR": 0.8} and thr.without == ["OVEN"]
    with pytest.raises(ExportError, match=r"t.csv, row 3: threshold '1.5' for OVEN is not in 0..1"):
        parse_thresholds("t.csv", b"species_code,threshold\nRUGR,0.8\nOVEN,1.5\n")
    with pytest.raises(ExportError, match="row 1: the columns must start with species_code,threshold"):
        parse_thresholds("t.csv", b"code,threshold\n")
