"""Charts logged as a run's artifacts (matplotlib, headless: the Agg backend, no display needed).

    tracker.log_figure(bar_chart(hist, "bin", "count", "student pass rate per question"), "pass_rate_histogram.png")
"""

from __future__ import annotations

import pandas as pd


def bar_chart(df: pd.DataFrame, x: str, y: str, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(df[x].astype(str), df[y].astype(float))
    ax.set_title(title)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    fig.tight_layout()
    plt.close(fig)
    return fig
