"""The continuous backtest's Kupiec and Christoffersen tests on the rolling window (SPEC: "rolling 250 observations:
exceedances, Kupiec, Christoffersen, Basel zone"), beside the ones since the backtest began: the counts are taken
here from the last ``rolling`` hits of the sequence, independently of the running counts
(logic/backtest_counts.py ``TrackCounts``), and a state stored and loaded half-way continues them."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from engine import math_logic
from engine.records import VarMethod
from logic.backtest_counts import TrackCounts

ROLLING = 250
CONFIDENCE = 0.99


def _pairs(hits: list[int]) -> tuple[int, int, int, int]:
    out = [0, 0, 0, 0]
    for a, b in zip(hits, hits[1:], strict=False):
        out[2 * a + b] += 1
    return out[0], out[1], out[2], out[3]


def _kupiec(x: int, n: int, c: float) -> tuple[float, float]:
    """Kupiec's POF likelihood ratio, written out here (0 ** 0 = 1)."""
    p = 1.0 - c

    def loglik(q: float) -> float:
        return (n - x) * (math.log(1.0 - q) if n > x else 0.0) + (x * math.log(q) if x else 0.0)

    lr = max(-2.0 * (loglik(p) - loglik(x / n)), 0.0)
    return lr, float(stats.chi2.sf(lr, 1))


def _summary(counts: TrackCounts) -> dict[str, object]:
    return counts.summary_dict(VarMethod.NORMAL, CONFIDENCE, ROLLING)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_rolling_tests_are_those_of_the_last_250_observations_and_survive_a_reload(seed: int) -> None:
    rng = np.random.default_rng(seed)
    hits = (rng.random(600) < np.where(np.arange(600) < 300, 0.06, 0.01)).astype(int).tolist()  # bad, then good
    counts = TrackCounts(rolling=ROLLING)
    for k, h in enumerate(hits, start=1):
        counts.add(bool(h))
        if k == 333:  # stored and loaded half-way: the window's pairs are counted again from the stored hits
            counts = TrackCounts.from_dict(counts.to_dict(), ROLLING)
        if k in (1, 2, ROLLING, ROLLING + 1, 333, 334, 600):
            window = hits[max(0, k - ROLLING) : k]
            s = _summary(counts)
            assert (s["rolling_observations"], s["rolling_exceedances"]) == (len(window), sum(window))
            lr, p = _kupiec(sum(window), len(window), CONFIDENCE)
            assert s["rolling_kupiec_lr"] == pytest.approx(lr, rel=1e-9, abs=1e-12), k
            assert s["rolling_kupiec_p"] == pytest.approx(p, rel=1e-9, abs=1e-12), k
            if len(window) >= 2:
                want = math_logic.christoffersen_independence_counts(*_pairs(window))
                assert (s["rolling_christoffersen_lr"], s["rolling_christoffersen_p"]) == want, k
            else:
                assert s["rolling_christoffersen_p"] is None
            whole = math_logic.christoffersen_independence_counts(*_pairs(hits[:k])) if k >= 2 else (None, None)
            assert (s["christoffersen_lr"], s["christoffersen_p"]) == whole  # since the start: as before
            if k <= ROLLING:  # up to a full window the two are one sample
                assert (s["rolling_kupiec_p"], s["rolling_christoffersen_p"]) == (s["kupiec_p"], s["christoffersen_p"])


def test_a_model_wrong_a_year_ago_and_right_now_fails_since_the_start_and_passes_the_rolling_window() -> None:
    counts = TrackCounts(rolling=ROLLING)
    for k in range(300):  # a hit in every tenth: 10% at 99%
        counts.add(k % 10 == 0)
    for k in range(ROLLING):  # then a hit in a hundredth: 1%, as it should
        counts.add(k % 100 == 0)
    s = _summary(counts)
    assert (s["rolling_observations"], s["rolling_exceedances"]) == (ROLLING, 3)
    assert s["kupiec_p"] < 1e-9 and s["rolling_kupiec_p"] > 0.5
    assert s["rolling_kupiec_p"] == pytest.approx(_kupiec(3, ROLLING, CONFIDENCE)[1], rel=1e-9)
