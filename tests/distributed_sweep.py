"""Run by tests/test_distributed.py in two processes (torchrun, or plain processes with the
torchrun environment): explains the sweep_setup settings with ``distributed=True`` over gloo
and, on rank 0, writes the results to the JSON file given as the first argument.
``--die-at I``: the rank 1 process exits when it loads image I (a rank that dies)."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
import sweep_setup as setup  # noqa: E402

import lavise_fast.pooling as pooling_module  # noqa: E402
from lavise_fast.sweep import explain  # noqa: E402

# name: (images, batch size, layers, method). The sizes give no process a batch of one image: oneDNN
# convolves a single image by another path whose float rounding differs, and the features of an
# image must be the same bits in both runs for the results to be compared exactly.
CASES = {
    "exact": (12, 3, "block3", "image"),  # the sketch is exact (432 values per channel): thresholds too
    "layers": (45, 5, setup.LAYERS, "projection"),  # 23 and 22 images
    "activation": (45, 5, ["block2", "block3"], "activation"),
    "tokens": (45, 5, ["tokens"], "image"),  # a ViT's layout: the class token dropped, 6 x 6 patches
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--die-at", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=args.timeout))
    results = {}
    for name, (n, batch_size, layers, method) in CASES.items():
        die_at = args.die_at if dist.get_rank() == 1 else None
        dataset = setup.RandomImages(n, die_at=die_at)
        result = explain(setup.model_for(layers), setup.loader(dataset, batch_size), setup.explainers_for(layers),
                         layer=layers,
                         vocabulary=setup.vocabulary(), top_images=4, words_per_image=3, method=method,
                         distributed=True, progress=False)
        results[name] = {k: asdict(r) for k, r in result.items()} if isinstance(result, dict) else asdict(result)
        results[name]["_loaded"] = dataset.loaded
    vectors, labels, expl = setup.reference_training(distributed=True)
    cached = {}
    # The feature cache: merged from the ranks' files (one folder here), then again as if rank 0 could not
    # see the other rank's file (another machine), which gathers the rows in memory instead.
    for name in ("merged", "gathered"):
        if name == "gathered" and dist.get_rank() == 0:
            pooling_module.shard_files_readable = lambda files, sizes: False
        rows, names, _ = setup.pooled(distributed=True, cache=f"{args.out}.{name}.npy")
        rows_now = torch.as_tensor(np.array(rows) if isinstance(rows, np.ndarray) else rows)
        cached[name] = {"type": type(rows).__name__, "vectors": rows_now, "labels": names}
    if dist.get_rank() == 0:
        torch.save({"vectors": vectors, "labels": labels, "head": expl.state_dict()}, args.out + ".training.pt")
    gathered_cache = [None] * dist.get_world_size()
    dist.all_gather_object(gathered_cache, cached)
    if dist.get_rank() == 0:
        torch.save(gathered_cache, args.out + ".cache.pt")
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, {name: r.pop("_loaded") for name, r in results.items()})
    if dist.get_rank() == 0:
        Path(args.out).write_text(json.dumps({"results": results, "loaded": gathered}))
    dist.barrier()  # see lavise_fast.distributed.all_gather: the gathers above are released before the exit
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
