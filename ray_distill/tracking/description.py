"""The parent run's description in MLflow (the run page's "Description" box, markdown): what a reader of the
MLflow UI wants first — which teacher won the smoke test, how many rows each stage kept, the student's scores
before and after, and where the corpus and student are.

    tracker.set_description(describe(result, wall_s=412.0))

The tables are fixed-width text in code blocks: MLflow's run page renders markdown tables without cell
padding, so their columns ran together (see docs/mlflow.md)."""

from __future__ import annotations


def text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """``header`` and ``rows`` as aligned columns in a fenced code block (the lines of the markdown)."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    return ["```", line(header), line(["-" * w for w in widths]), *[line(r) for r in rows], "```"]


def describe(result, wall_s: float | None = None, model_uri: str | None = None) -> str:
    """Markdown summary of a :class:`ray_distill.pipeline.JobResult` (a whole job or a stage command)."""
    lines = [f"**ray-distill {'run' if result.until == 'evaluate' and result.ranking else result.until}**"
             + (f" in {wall_s / 60:.1f} min" if wall_s is not None else "")]
    if result.scores_after:
        rows = []
        for suite, after in result.scores_after.items():
            before = result.scores_before.get(suite, {}).get("avg_at_k")
            rows.append([suite, "–" if before is None else f"{before:.3f}", f"{after['avg_at_k']:.3f}",
                         f"[{after['ci_low']:.3f}, {after['ci_high']:.3f}]"])
        lines += ["", "Student avg@k", "",
                  *text_table(["suite", "before", "after", "after 95% CI"], rows)]
    if result.ranking:
        by = result.ranking[0].get("ranked_by", "score")
        rows = [[str(r["rank"]), r["teacher"], "–" if r.get("reason") else f"{r[by]:.3f}",
                 "–" if r.get("reason") else f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]",
                 str(r.get("train_rows") or "–"), r.get("reason") or ""] for r in result.ranking]
        lines += ["", f"Teacher: **{result.winner}** (ranked by `{by}`)", "",
                  *text_table(["rank", "teacher", by, "95% CI", "train rows", "reason"], rows)]
    if result.rows:
        lines += ["", "Rows kept at each stage", "",
                  *text_table(["stage", "rows"], [[stage, f"{n:,}"] for stage, n in result.rows.items()])]
    where = [("corpus", result.corpus_dir), ("student", result.model_path), ("MLflow model", model_uri)]
    lines += [""] + [f"- {k}: `{v}`" for k, v in where if v]
    return "\n".join(lines).strip() + "\n"
