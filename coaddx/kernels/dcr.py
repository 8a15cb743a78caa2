"""DcrAssembleCoadd's scalar loop arithmetic (algorithms.md 4.6): the progressive gain and the
conditioning of a model update. Plain numpy, keyword-only scalars."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["condition_model", "dcr_gain"]


def dcr_gain(
    convergence: Sequence[float],
    gains: Sequence[float],
    *,
    base_gain: float,
    progressive: bool = True,
) -> float:
    """The gain of the next model update (LSST calculateGain).

    ``convergence`` holds the metrics C_0..C_{n-1} so far and ``gains`` the gains g_0..g_{n-2}
    used between them (``len(convergence) == len(gains) + 1``). Without ``progressive``, or
    with fewer than three metrics, the gain is ``base_gain``; otherwise each past step's
    asymptote e_j = ((1 + g_j) C_{j+1} - C_j) / g_j (negative values set to 0) is estimated,
    E is the median of e_j for j >= n - 5 (LSST's window), the metric the last gain should
    have reached is predicted, and the new gain ((1 - |delta|) + g_last) / 2 grows as the
    prediction holds, never below ``base_gain``.
    """
    c = np.asarray(convergence, dtype=np.float64)
    g = np.asarray(gains, dtype=np.float64)
    if c.size != g.size + 1:
        raise ValueError(
            f"dcr_gain needs one more convergence value than gains, got {c.size} and {g.size}"
        )
    if not progressive or c.size <= 2:
        return float(base_gain)
    est = ((1 + g) * c[1:] - c[:-1]) / g
    est[est < 0] = 0.0
    asymptote = float(np.median(est[max(c.size - 5, 0) :]))
    g_last = float(g[-1])
    predicted = (asymptote * g_last + c[-2]) / (1 + g_last)
    delta = (predicted - c[-1]) / ((c[-2] - asymptote) / (1 + g_last))
    return float(max(base_gain, ((1 - abs(delta)) + g_last) / 2))


def condition_model(new: np.ndarray, old: np.ndarray, *, gain: float) -> np.ndarray:
    """conditionDcrModel: the update damped by ``gain``, (gain new + old) / (1 + gain)."""
    return (gain * new + old) / (1 + gain)
