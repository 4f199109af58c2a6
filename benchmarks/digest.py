"""``model_digest`` of a large safetensors checkpoint: the old whole-file hash vs the sampled one.

    python benchmarks/digest.py                 # one 1.5 GiB bf16 shard of 7B-shaped tensors
    python benchmarks/digest.py --gib 4 --repeats 3

Writes a synthetic ``model.safetensors`` (random bf16 tensors shaped like a 7B model's layers) plus a
``config.json`` into a temporary folder, then times the old digest (every byte through sha256, what
``model_digest`` did before: ``_digest(..., full_below=inf)``) against the new one (header + each
tensor's first 4 KiB + first/middle/last MiB of a shard over 512 MiB), each on a fresh cache, ``--repeats``
times, and prints the medians and their ratio. The file is written just before, so both read from the
page cache: the ratio is the hashing saved; on object storage the old digest also downloads every byte.

Measured on a shared 2-core CPU machine (1.5 GiB, page cache warm): see the line this prints, and
docs/reproducibility.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def write_model(folder: str, gib: float) -> int:
    """A safetensors shard of ``gib`` GiB of bf16 tensors shaped like a 7B model's (4096 x 4096 and
    4096 x 11008 projections); returns its size in bytes."""
    import torch
    from safetensors.torch import save_file

    tensors, total, i = {}, 0, 0
    g = torch.Generator().manual_seed(0)
    while total < gib * 2**30:
        shape = (4096, 11008) if i % 3 == 2 else (4096, 4096)
        tensors[f"model.layers.{i // 7}.w{i % 7}.weight"] = torch.randn(shape, generator=g, dtype=torch.bfloat16)
        total += math.prod(shape) * 2
        i += 1
    save_file(tensors, os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"model_type": "llama", "dtype": "bfloat16"}, f)
    return os.path.getsize(os.path.join(folder, "model.safetensors"))


def timed(path: str, full_below: float) -> tuple[float, str]:
    import fsspec

    from ray_distill.generation import store as S

    fs, root = fsspec.core.url_to_fs(path)
    files = sorted(fs.find(root, detail=True).items())
    signature = tuple((f, int(i["size"]), str(i["mtime"])) for f, i in files)
    S._digest.cache_clear()
    t0 = time.perf_counter()
    digest = S._digest(path, signature, full_below)
    return time.perf_counter() - t0, digest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=1.5, help="size of the synthetic shard")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    from ray_distill.generation.store import FULL_HASH_BELOW

    with tempfile.TemporaryDirectory(prefix="rd-digest-") as folder:
        size = write_model(folder, args.gib)
        old = [timed(folder, math.inf) for _ in range(args.repeats)]
        new = [timed(folder, FULL_HASH_BELOW) for _ in range(args.repeats)]
    t_old, t_new = statistics.median(t for t, _ in old), statistics.median(t for t, _ in new)
    assert len({d for _, d in old}) == 1 and len({d for _, d in new}) == 1 and old[0][1] != new[0][1]
    print(f"model_digest of a {size / 2**30:.2f} GiB safetensors shard, median of {args.repeats}: "
          f"old (every byte) {t_old:.3f} s, new (sampled) {t_new:.4f} s, new/old {t_new / t_old:.4f} "
          f"({t_old / t_new:.0f}x faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
