"""Evaluation statistics (pure): unbiased pass@k, Wilson intervals, macro averages over suites.

    pass_at_k(n=16, c=3, k=4)          # 1 - C(13, 4) / C(16, 4) = 0.607
    wilson_interval(0.0, 30)           # (0.0, 0.114): never a zero-width interval at 0 or 1
    macro_average({"aime24": {...}, "gpqa": {...}}, {"aime24": "in_domain", "gpqa": "ood"})
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from statistics import NormalDist

Z_95 = NormalDist().inv_cdf(0.975)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one question with ``c`` correct among ``n`` samples (Chen et al. 2021):
    ``1 - C(n-c, k) / C(n, k)``, the chance that k samples drawn without replacement hold a correct one."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def wilson_interval(p: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``p`` observed over ``n`` trials (95% by default).

    Unlike the Wald interval ``p ± z·sqrt(p(1-p)/n)`` it stays inside [0, 1] and keeps a width at p = 0
    or 1 (a suite the student never solves is not 'exactly 0 with certainty'). For avg@k, ``p`` is the
    mean per-question rate and ``n`` the number of questions: each question counted as one trial, which
    is conservative when k > 1 (a rate in [0, 1] with mean p has variance at most p(1-p))."""
    if n < 1:
        raise ValueError(f"wilson_interval needs n >= 1, got {n}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"wilson_interval needs 0 <= p <= 1, got {p}")
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def macro_average(scores: Mapping[str, Mapping], domains: Mapping[str, str] | None = None,
                  metric: str = "avg_at_k") -> dict[str, float]:
    """The unweighted mean of ``metric`` over suites (each suite counts once, whatever its size):
    ``{"all": ..., "in_domain": ..., "ood": ...}`` (a domain without a suite is left out)."""
    domains = domains or {}
    groups: dict[str, list[float]] = {"all": []}
    for name, m in scores.items():
        value = float(m[metric])
        groups["all"].append(value)
        if name in domains:
            groups.setdefault(domains[name], []).append(value)
    return {group: sum(vals) / len(vals) for group, vals in groups.items() if vals}
