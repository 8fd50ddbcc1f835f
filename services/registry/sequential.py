"""A sequential test on paired outcomes: is one model more accurate than the other?

Two models scored on the same labelled frames agree on most of them (both right or both
wrong); those frames say nothing about which one is better. The *discordant* frames, where
exactly one of them is right, do: ``wins`` counts those where the model under test is the one
right, ``losses`` those where the other is. If the model under test is not better, each
discordant frame is a win with probability ``p <= 1/2`` (McNemar's setting), whatever the
accuracies and whatever the frames.

The statistic is a mixture likelihood ratio against ``p = 1/2``, with a uniform prior over
``p`` in ``(1/2, 1]`` ("better, by any amount")::

    M(w, l) = integral over (1/2, 1] of 2 p^w (1-p)^l dp  /  (1/2)^(w+l)
            = sum_{k=0..w} C(n+1, k) / ((n+1) C(n, w)),           n = w + l

Each ``(p/(1/2))^w ((1-p)/(1/2))^l`` with ``p > 1/2`` is a nonnegative supermartingale in
the number of discordant frames whenever the true win probability is at most 1/2 (a
martingale at exactly 1/2), so their mixture ``M`` is one too, starting at 1. Ville's
inequality then bounds the chance that ``M`` *ever* reaches ``1/alpha``:

    P(sup_n M_n >= 1/alpha) <= alpha.

A model that is not better is therefore declared better with probability at most ``alpha``,
however often the counts are looked at, at whatever moments, and for however long: checking
cumulative counts after every label, or at irregular moments, or never stopping, is all
covered. No sample size is fixed in advance, and a large difference is decisive after a
handful of discordant frames (nine wins in a row reach ``1/alpha`` for ``alpha = 0.01``).

Why this test and not a fixed-n McNemar test or an SPRT: a fixed-n test loses its bound when
it is looked at repeatedly, and Wald's SPRT needs one alternative ``p1`` chosen in advance
(too small a difference is slow to decide, too large one mis-specified). The mixture pays a
little power for covering every alternative at once.

Pure: no I/O. Everything is computed in log space (``math.lgamma``), so counts in the tens of
thousands are safe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Evidence", "evidence", "log_mixture_ratio", "wins_needed"]

_LOG2 = math.log(2.0)


@dataclass(frozen=True)
class Evidence:
    """The test on one pair of counts: ``wins`` (discordant frames where the model under test
    was the one right), ``losses`` (where the other one was), at level ``alpha``."""

    wins: int
    losses: int
    alpha: float
    log_ratio: float
    """Natural log of the mixture likelihood ratio ``M(wins, losses)``."""

    @property
    def discordant(self) -> int:
        """Frames on which exactly one of the two models was right."""
        return self.wins + self.losses

    @property
    def threshold(self) -> float:
        """``1 / alpha``: the ratio that decides."""
        return 1.0 / self.alpha

    @property
    def decisive(self) -> bool:
        """True when the ratio reached ``1 / alpha``: the model under test is better, with a
        false-decision probability of at most ``alpha`` over the whole sequence."""
        return self.log_ratio >= -math.log(self.alpha)

    def summary(self, model: str, other: str) -> str:
        """One line for a lifecycle reason, e.g. ``bbb alone right on 10 and aaa alone right
        on 0 of 10 discordant frames: likelihood ratio 186 >= 100 (1/alpha, alpha 0.01)``."""
        sign = ">=" if self.decisive else "<"
        return (
            f"{model} alone right on {self.wins} and {other} alone right on {self.losses} of "
            f"{self.discordant} discordant frames: likelihood ratio "
            f"{_ratio_text(self.log_ratio)} {sign} {self.threshold:g} "
            f"(1/alpha, alpha {self.alpha:g})"
        )


def evidence(wins: int, losses: int, alpha: float) -> Evidence:
    """The test of "the model under test is better" on ``wins`` and ``losses`` (cumulative
    counts of discordant frames) at level ``alpha``.

    Raises ValueError on a negative count or an ``alpha`` outside (0, 1).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be within (0, 1), not {alpha}")
    return Evidence(wins, losses, alpha, log_mixture_ratio(wins, losses))


def log_mixture_ratio(wins: int, losses: int) -> float:
    """``log M(wins, losses)`` (see the module docstring); 0 when there is no discordant frame.

    Raises ValueError on a negative count.
    """
    if wins < 0 or losses < 0:
        raise ValueError(f"counts must not be negative (wins {wins}, losses {losses})")
    n = wins + losses
    # M = P(Binomial(n+1, 1/2) <= w) * 2^(n+1) / ((n+1) C(n, w)): the integral of the Beta
    # density over (1/2, 1] is a binomial tail, for integer parameters.
    return _log_binomial_cdf(n + 1, wins) + (n + 1) * _LOG2 - math.log(n + 1) - _log_choose(n, wins)


def wins_needed(discordant: int, alpha: float) -> int | None:
    """The fewest wins out of ``discordant`` discordant frames that are decisive at ``alpha``;
    None when even ``discordant`` wins out of ``discordant`` are not.

    ``M`` grows with the wins for a fixed number of discordant frames, so this is a threshold:
    the test is decisive exactly when ``wins >= wins_needed(wins + losses, alpha)``.
    """
    if discordant < 0:
        raise ValueError(f"discordant must not be negative, not {discordant}")
    bar = -math.log(alpha)
    if log_mixture_ratio(discordant, 0) < bar:
        return None
    lo, hi = 0, discordant  # hi is decisive
    while lo < hi:
        mid = (lo + hi) // 2
        if log_mixture_ratio(mid, discordant - mid) >= bar:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _log_choose(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _log_binomial_cdf(n: int, k: int) -> float:
    """``log P(X <= k)`` for ``X ~ Binomial(n, 1/2)``."""
    if k >= n:
        return 0.0
    if k < 0:
        return -math.inf
    if 2 * k >= n:
        # The upper half: 1 - P(X <= n-k-1) by symmetry; that tail is at most 1/2.
        return math.log1p(-math.exp(_log_binomial_cdf(n, n - k - 1)))
    # Below the mean the terms C(n, j) fall off as j goes down (ratio j / (n-j+1)): sum
    # them relative to the largest until they no longer count.
    total = term = 1.0
    for j in range(k, 0, -1):
        term *= j / (n - j + 1)
        total += term
        if term < total * 1e-17:
            break
    return _log_choose(n, k) - n * _LOG2 + math.log(total)


def _ratio_text(log_ratio: float) -> str:
    """The ratio for people: ``186``, ``0.42``, ``3.1e+45`` (from its log, so it never
    overflows)."""
    if abs(log_ratio) < math.log(1e6):
        ratio = math.exp(log_ratio)
        return f"{ratio:.3g}" if ratio < 10 else f"{ratio:,.0f}"
    exponent = log_ratio / math.log(10)
    power = math.floor(exponent)
    return f"{10 ** (exponent - power):.1f}e{power:+d}"
