"""What a job needs per stage and per GPU against what its cluster has (``ray-distill plan JOB``).

- :mod:`~ray_distill.planning.shapes`: architectures from shipped or cached ``config.json`` files, counted on the
  meta device (no weights, no network, no storage);
- :mod:`~ray_distill.planning.memory`: bytes per GPU of training, vLLM engines and the export (pure arithmetic);
- :mod:`~ray_distill.planning.placement`: node types of a cluster config and where a stage's units land;
- :mod:`~ray_distill.planning.plan`: the job's stages against the node types, and the one-line refusal.
"""
