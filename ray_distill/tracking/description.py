"""The parent run's description in MLflow (the run page's "Description" box, markdown): what a reader of the
MLflow UI wants first — which teacher won the smoke test, how many rows each stage kept, the student's scores
before and after, and where the corpus and student are.

    tracker.set_description(describe(result, wall_s=412.0))
"""

from __future__ import annotations


def describe(result, wall_s: float | None = None, model_uri: str | None = None) -> str:
    """Markdown summary of a :class:`ray_distill.pipeline.JobResult` (a whole job or a stage command)."""
    lines = [f"**ray-distill {'run' if result.until == 'evaluate' and result.ranking else result.until}**"
             + (f" in {wall_s / 60:.1f} min" if wall_s is not None else "")]
    if result.ranking:
        by = result.ranking[0].get("ranked_by", "score")
        lines += ["", f"Teacher: **{result.winner}** (ranked by `{by}`)", "",
                  f"| rank | teacher | {by} | 95% CI | train rows | reason |", "|---|---|---|---|---|---|"]
        for r in result.ranking:
            score = "–" if r.get("reason") else f"{r[by]:.3f}"
            ci = "–" if r.get("reason") else f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
            lines.append(f"| {r['rank']} | {r['teacher']} | {score} | {ci} | {r.get('train_rows') or '–'} "
                         f"| {r.get('reason') or ''} |")
    if result.rows:
        lines += ["", "| stage | rows |", "|---|---|"]
        lines += [f"| {stage} | {n:,} |" for stage, n in result.rows.items()]
    if result.scores_after:
        lines += ["", "| suite | before avg@k | after avg@k | after 95% CI |", "|---|---|---|---|"]
        for suite, after in result.scores_after.items():
            before = result.scores_before.get(suite, {}).get("avg_at_k")
            lines.append(f"| {suite} | {'–' if before is None else f'{before:.3f}'} | {after['avg_at_k']:.3f} "
                         f"| [{after['ci_low']:.3f}, {after['ci_high']:.3f}] |")
    where = [("corpus", result.corpus_dir), ("student", result.model_path), ("MLflow model", model_uri)]
    lines += [""] + [f"- {k}: `{v}`" for k, v in where if v]
    return "\n".join(lines).strip() + "\n"
