"""How well the demo's words name its filters: the numbers of issue 11, measured independently.

Runs ``lavise_fast.demo.run_demo`` for each seed and model, then recomputes every quality number
from ``result.json`` with plain loops (never through ``lavise_fast.evaluate``), so that the same
script measures any version of the package (the code before a change and after it):

- ties: share of filters whose two best words have the same score;
- top-1 words: how many distinct words are some filter's first word;
- top-5 share: the largest share of filters that list one word among their first 5;
- recall@10, seen and unseen: per (filter, top image) pair the ground truth is the set of words
  whose mask has IoU > 0.04 with the filter's map (upsampled bilinearly, thresholded at the
  result's threshold); recall is averaged over pairs with a non-empty ground truth;
- the same for the filters' lists shuffled across filters (20 seeded permutations, mean), and
  for random 10-word lists (20 seeded draws, mean); gain = own minus shuffled;
- the Network-Dissection label (``evaluation.json``) among the first 1/3/5 words, over the
  filters whose ND IoU is at least 0.1 (and over all filters);
- mean rank of each pair's unseen ground-truth words among the unseen words (1 = first; words a
  list does not hold share the mean of the ranks left), against chance (U + 1) / 2; the same
  for seen words.

    PYTHONPATH=. python bench/word_quality.py --model small-resnet --seeds 0 1 2 3 4 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def ground_truth(features: torch.Tensor, result: dict, target, iou_threshold: float = 0.04) -> dict:
    """{(filter position, image): set of words} for the result's scored pairs, one pair at a time."""
    truth = {}
    for kk, (f, t, images) in enumerate(zip(result["filters"], result["thresholds"], result["top_images"],
                                            strict=True)):
        for i in images:
            _, masks, labels = target[i]
            up = F.interpolate(features[i, f][None, None].float(), size=tuple(masks.shape[1:]), mode="bilinear",
                               align_corners=False)[0, 0] > t
            regions: dict[str, torch.Tensor] = {}
            for m, w in zip(masks, labels, strict=True):
                regions[w] = regions[w] | m if w in regions else m.clone()
            gt = set()
            for w, region in regions.items():
                union = int((up | region).sum())
                if union and int((up & region).sum()) / union > iou_threshold:
                    gt.add(w)
            if gt:
                truth[kk, i] = gt
    return truth


def recall(truth: dict, lists: list[list[str]], restrict: set[str], n: int = 10) -> float | None:
    total, count = 0.0, 0
    for (kk, _), gt in truth.items():
        gt = gt & restrict
        if gt:
            total += len(gt & set(lists[kk][:n])) / len(gt)
            count += 1
    return total / count if count else None


def mean_rank(truth: dict, lists: list[list[str]], group: set[str]) -> float | None:
    """Mean rank (1 = best) of the ground-truth words of ``group`` among the words of ``group``."""
    total, count = 0.0, 0
    for (kk, _), gt in truth.items():
        listed = [w for w in lists[kk] if w in group]
        rest = len(group) - len(listed)
        unlisted = len(listed) + (rest + 1) / 2
        for w in gt & group:
            total += listed.index(w) + 1 if w in listed else unlisted
            count += 1
    return total / count if count else None


def measure(out_dir: Path, model_name: str, seed: int, scoring: str | None = None) -> dict:
    from lavise_fast import demo as demo_module
    from lavise_fast.layers import layer_features

    started = time.perf_counter()
    overrides = {} if scoring is None else {"scoring": scoring}
    summary = demo_module.run_demo(out_dir, model_name, progress=False, seed=seed, **overrides)
    seconds = time.perf_counter() - started
    result = json.loads((out_dir / "result.json").read_text())
    evaluation = json.loads((out_dir / "evaluation.json").read_text())
    settings = demo_module._defaults_for(model_name)
    from dataclasses import replace

    settings = replace(settings, seed=seed)
    world = settings.world()
    target = torch.utils.data.Subset(world, range(settings.reference_size, len(world)))
    network = demo_module.demo_model(settings, progress=False)[0] if model_name == "small-resnet" \
        else demo_module.efficientnet_lite0()
    images = torch.stack([target[i][0] for i in range(len(target))])
    with torch.no_grad():
        features = torch.cat([layer_features(network, result["settings"]["layer"], images[j : j + 64])
                              for j in range(0, len(images), 64)])
    truth = ground_truth(features, result, target)
    seen, unseen = set(result["settings"]["seen"]), set(result["settings"]["unseen"])
    lists = result["words"]
    K = len(lists)
    scores = result["scores"]
    ties = sum(1 for s in scores if len(s) >= 2 and s[0] == s[1]) / K
    top1 = {ws[0] for ws in lists if ws}
    counts: dict[str, int] = {}
    for ws in lists:
        for w in set(ws[:5]):
            counts[w] = counts.get(w, 0) + 1
    hub, hub_count = max(counts.items(), key=lambda kv: (kv[1], kv[0]))
    g = torch.Generator().manual_seed(0)
    shuffled = {"seen": [], "unseen": []}
    randomised = {"seen": [], "unseen": []}
    vocabulary = sorted(seen | unseen)
    for _ in range(20):
        perm = torch.randperm(K, generator=g).tolist()
        other = [lists[p] for p in perm]
        rnd = [[vocabulary[j] for j in torch.randperm(len(vocabulary), generator=g)[:10].tolist()] for _ in range(K)]
        for part, words in (("seen", seen), ("unseen", unseen)):
            shuffled[part].append(recall(truth, other, words))
            randomised[part].append(recall(truth, rnd, words))
    dissection = evaluation["dissection"]
    strong = [kk for kk, f in enumerate(result["filters"]) if dissection[str(f)]["iou"] >= 0.1]

    def nd_share(filters: list[int], n: int) -> float | None:
        hits = [dissection[str(result["filters"][kk])]["concept"] in lists[kk][:n] for kk in filters]
        return sum(hits) / len(hits) if hits else None

    own = {part: recall(truth, lists, words) for part, words in (("seen", seen), ("unseen", unseen))}
    mean = {part: statistics.fmean(v) for part, v in shuffled.items()}
    return {
        "model": model_name, "seed": seed, "scoring": result["settings"].get("scoring", "vote"), "filters": K,
        "polysemantic": sum(len(g) > 1 for g in result.get("groups", [])), "vocabulary": len(vocabulary),
        "seconds": seconds,
        "stage_seconds": summary["timings"],
        "ties": ties, "distinct_top1": len(top1), "top5_share": hub_count / K, "top5_word": hub,
        "recall10": own, "shuffled10": mean, "random10": {p: statistics.fmean(v) for p, v in randomised.items()},
        "gain10": {p: (own[p] - mean[p]) if own[p] is not None else None for p in own},
        "nd_top": {n: nd_share(strong, n) for n in (1, 3, 5)}, "nd_strong_filters": len(strong),
        "nd_top_all": {n: nd_share(list(range(K)), n) for n in (1, 3, 5)},
        "rank_unseen": mean_rank(truth, lists, unseen), "rank_unseen_chance": (len(unseen) + 1) / 2,
        "rank_seen": mean_rank(truth, lists, seen), "rank_seen_chance": (len(seen) + 1) / 2,
        "pairs": len(truth),
    }


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def table(rows: list[dict]) -> str:
    keys = [("ties", lambda r: r["ties"]), ("top-1 words", lambda r: r["distinct_top1"]),
            ("top-5 share", lambda r: r["top5_share"]),
            ("seen r@10", lambda r: r["recall10"]["seen"]), ("unseen r@10", lambda r: r["recall10"]["unseen"]),
            ("shuffled seen", lambda r: r["shuffled10"]["seen"]),
            ("shuffled unseen", lambda r: r["shuffled10"]["unseen"]),
            ("gain seen", lambda r: r["gain10"]["seen"]), ("gain unseen", lambda r: r["gain10"]["unseen"]),
            ("random seen", lambda r: r["random10"]["seen"]), ("random unseen", lambda r: r["random10"]["unseen"]),
            ("ND in top 3 (IoU>=.1)", lambda r: r["nd_top"][3]),
            ("ND strong filters", lambda r: r["nd_strong_filters"]),
            ("ND in top 3 (all)", lambda r: r["nd_top_all"][3]),
            ("unseen rank", lambda r: r["rank_unseen"]), ("unseen chance", lambda r: r["rank_unseen_chance"]),
            ("seen rank", lambda r: r["rank_seen"]), ("seen chance", lambda r: r["rank_seen_chance"]),
            ("polysemantic filters", lambda r: r.get("polysemantic", 0)),
            ("demo stages s", lambda r: sum(v for k, v in r["stage_seconds"].items() if k != "total"))]
    lines = ["| measure | " + " | ".join(f"seed {r['seed']}" for r in rows) + " | mean of seeds 1-4 |",
             "|---|" + "---|" * (len(rows) + 1)]
    for name, get in keys:
        values = [get(r) for r in rows]
        rest = [v for r, v in zip(rows, values, strict=True) if r["seed"] != 0 and v is not None]
        mean = statistics.fmean(rest) if rest else None
        lines.append(f"| {name} | " + " | ".join(_fmt(v) for v in values) + f" | {_fmt(mean)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="small-resnet", choices=("small-resnet", "efficientnet-lite0"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scoring", help="explain's scoring (default: the demo's); the code before issue 11 "
                        "only votes")
    parser.add_argument("--json", type=Path, help="write the rows here as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lavise_quality_") as tmp:
        for seed in args.seeds:
            row = measure(Path(tmp) / f"{args.model}-{seed}", args.model, seed, args.scoring)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
