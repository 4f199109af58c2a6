"""Pareto front of student score vs corpus size (pure), and its plot."""

from __future__ import annotations

import pandas as pd


def pareto_front(df: pd.DataFrame, score: str = "score", cost: str = "corpus_rows") -> pd.DataFrame:
    """Rows not dominated by any other row (higher-or-equal score at lower-or-equal cost, one strictly).

    Sorted by cost ascending."""
    rows = df.sort_values([cost, score], ascending=[True, False])
    front, best = [], float("-inf")
    for idx, row in rows.iterrows():
        if row[score] > best:
            front.append(idx)
            best = row[score]
    return df.loc[front].sort_values(cost)


def plot_front(df: pd.DataFrame, front: pd.DataFrame, score: str = "score", cost: str = "corpus_rows",
               baseline: float | None = None):
    """Trials and their front; ``baseline`` (the base student's score) as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(df[cost], df[score], label="trials", alpha=0.6)
    ax.plot(front[cost], front[score], "r-o", label="Pareto front")
    if baseline is not None:
        ax.axhline(baseline, color="gray", linestyle="--", label="base student")
    ax.set_xlabel(f"{cost} (data budget)")
    ax.set_ylabel(f"{score} (in-domain avg@k)")
    ax.set_title("Student score vs corpus size")
    ax.legend()
    fig.tight_layout()
    plt.close(fig)
    return fig
