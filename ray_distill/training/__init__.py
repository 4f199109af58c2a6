"""SFT with Ray Train: ``train_sft(rows, base_model, output_path, cfg, storage_path, run_name)``.

- :mod:`ray_distill.training.data` — encoding with assistant-only labels, batch plans (length-bucketed
  or shuffled), packing into rows, collation, preflight (pure functions).
- :mod:`ray_distill.training.loop` — the Ray Train worker loop (DDP/FSDP, bf16, gradient accumulation
  and checkpointing, step/epoch checkpoints, exact resume).
- :mod:`ray_distill.training.shard` — the student as workers train it: meta-device init, weights streamed
  from rank 0 into FSDP2 shards, the loss inside the forward (:mod:`ray_distill.training.loss`, chunked).
- :mod:`ray_distill.training.optim` — AdamW with fp32 moments and stochastic rounding for bf16 parameters
  (``train.param_dtype: bf16``).
- :mod:`ray_distill.training.checkpoint` — sharded checkpoints (torch.distributed.checkpoint, every rank
  writes and reads its shards on any fsspec URL) and the ``save_pretrained`` export.
- :mod:`ray_distill.training.sft` — the driver: :func:`train_sft`, :func:`train_sft_many` (several corpora on
  the same base in one launch) and :class:`TrainResult`.
"""

from ray_distill.training.data import encode_example, preflight
from ray_distill.training.sft import SFTJob, TrainResult, train_sft, train_sft_many

__all__ = ["SFTJob", "TrainResult", "encode_example", "preflight", "train_sft", "train_sft_many"]
