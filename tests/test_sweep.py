"""Multi-layer sweeps (one forward pass, each layer its own statistics) and checkpoints: a sweep
killed mid-way (SIGKILL) resumes to the result of an uninterrupted run; a checkpoint of another
sweep, or a damaged one, is refused with a clear error."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import sweep_setup as setup
import torch

import lavise_fast.stats
import lavise_fast.sweep
from lavise_fast.loaders import images_at_most
from lavise_fast.sweep import explain

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def world():
    return setup.tiny_model(), setup.explainers(), setup.vocabulary()


def run(world, dataset, layers=setup.LAYERS, loader_batch=5, **kw):
    model, expls, vocab = world
    kw = {"top_images": 4, "words_per_image": 3, "progress": False, **kw}
    chosen = {name: expls[name] for name in layers} if isinstance(layers, list) else expls[layers]
    return explain(model, setup.loader(dataset, loader_batch), chosen, layer=layers, vocabulary=vocab, **kw)


@pytest.mark.parametrize("method", ["projection", "image", "original"])
def test_several_layers_in_one_pass_equal_one_layer_at_a_time(world, method):
    dataset = setup.RandomImages(23)  # 5 batches, the last one short
    together = run(world, dataset, method=method, filters={"block2": [3, 0, 15]})
    assert list(together) == setup.LAYERS
    for name in setup.LAYERS:
        alone = run(world, dataset, layers=name, method=method, filters=[3, 0, 15] if name == "block2" else None)
        setup.same(together[name], alone)
    assert together["block2"].filters == [3, 0, 15] and len(together["block3"].filters) == 24
    assert all(words for words in together["block3"].words)  # the explanations are not empty


def test_several_layers_take_per_layer_thresholds_and_explainer_lists(world):
    model, expls, vocab = world
    dataset = setup.RandomImages(15)
    first = run(world, dataset)
    thresholds = {name: result.thresholds for name, result in first.items()}
    given = run(world, dataset, method="activation", thresholds=thresholds)
    rerun = run(world, dataset, method="activation")  # thresholds from the sketch, top images re-run
    for name in setup.LAYERS:
        assert given[name].words == rerun[name].words and given[name].thresholds == rerun[name].thresholds
    as_list = explain(model, setup.loader(dataset), list(expls.values()), vocabulary=vocab, top_images=4,
                      words_per_image=3, progress=False)
    setup.same(as_list, first)


def test_the_sketch_floor_leaves_thresholds_and_words_as_without_it(world, monkeypatch):
    # 96 images sorted by "class" (the first 12 brighter), in batches of 8: block1's 8 x 576
    # positions a batch reach the floor's minimum from the fifth batch on. The thresholds (the
    # sketch's 0.995 quantiles) and everything else equal a sweep whose sketch sorts every value.
    dataset = setup.RandomImages(96)
    dataset.images[:12] = dataset.images[:12] * 2 + 3
    ranks = []
    update = lavise_fast.stats.ChannelQuantiles.update

    def recording(self, features, floor_rank=0.0):
        ranks.append(floor_rank)
        update(self, features, floor_rank)

    monkeypatch.setattr(lavise_fast.stats.ChannelQuantiles, "update", recording)
    floored = run(world, dataset, loader_batch=8)
    assert max(ranks) > 0.95 and ranks[0] == 0.0  # the floor was on, after a first batch without
    monkeypatch.setattr(lavise_fast.sweep, "safe_floor_rank", lambda *args: 0.0)
    setup.same(floored, run(world, dataset, loader_batch=8))


def test_images_at_most_bounds_one_pass_before_it_starts():
    dataset = setup.RandomImages(23)
    assert images_at_most(setup.loader(dataset, 5)) == 25  # 5 batches, the last one of 3
    assert images_at_most(setup.loader(dataset, 23)) == 23
    assert images_at_most([torch.zeros(4, 3, 2, 2), (torch.zeros(3, 3, 2, 2), "labels")]) == 7
    assert images_at_most(x for x in [torch.zeros(4, 3, 2, 2)]) is None  # a generator: unknown

    class Stream(torch.utils.data.IterableDataset):  # says 4 images; two workers would yield 8
        def __len__(self):
            return 4

        def __iter__(self):
            return iter(torch.zeros(4, 3, 2, 2))

    assert images_at_most(torch.utils.data.DataLoader(Stream(), batch_size=2)) is None
    one_pass = sum(batch.shape[0] for batch in setup.loader(dataset, 5))
    assert one_pass <= images_at_most(setup.loader(dataset, 5))


def test_several_layers_bad_arguments(world):
    model, expls, vocab = world
    images = setup.loader(setup.RandomImages(5))
    with pytest.raises(ValueError, match="one explainer explains one layer"):
        explain(model, images, expls["block1"], layer=["block1", "block2"], vocabulary=vocab, progress=False)
    with pytest.raises(ValueError, match=r"filters= names layers that are not explained: \['block9'\]"):
        run(world, setup.RandomImages(5), filters={"block9": [0]})
    with pytest.raises(TypeError, match=r"thresholds= must be a dict"):
        run(world, setup.RandomImages(5), thresholds=[0.0] * 8)
    with pytest.raises(ValueError, match=r"layer= names \['block1'\], the explainers are for"):
        explain(model, images, expls, layer=["block1"], vocabulary=vocab, progress=False)
    with pytest.raises(ValueError, match="layers must not repeat"):
        explain(model, images, [expls["block1"], expls["block1"]], vocabulary=vocab, progress=False)


KILLED_SWEEP = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import sweep_setup as setup
    from lavise_fast.sweep import explain
    dataset = setup.RandomImages({n}, stall_at={stall}, marker={marker!r})
    explain(setup.tiny_model(), setup.loader(dataset), setup.explainers(), layer=setup.LAYERS,
            vocabulary=setup.vocabulary(), top_images=4, words_per_image=3, method={method!r},
            checkpoint={folder!r}, checkpoint_every=2, progress=False)
    raise SystemExit("the sweep was meant to be killed before it ended")
""")


@pytest.mark.parametrize("method", ["projection", "image"])
def test_a_sweep_killed_mid_way_resumes_to_the_uninterrupted_result(world, tmp_path, method):
    n, stall = 43, 27  # batches of 5: the checkpoint after batch 4 holds 20 images; item 27 never returns
    folder, marker = tmp_path / "ckpt", tmp_path / "stalled"
    script = KILLED_SWEEP.format(tests=str(HERE), n=n, stall=stall, marker=str(marker), method=method,
                                 folder=str(folder))
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, f"the sweep ended before it was killed: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "the sweep never reached the stalling image"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert (folder / "sweep.pt").is_file()
    assert not [p for p in folder.iterdir() if p.name != "sweep.pt"]  # no temporary file left behind
    saved = torch.load(folder / "sweep.pt", weights_only=True)["state"]
    assert (saved["batches"], saved["images"], saved["pass_done"]) == (4, 20, False)

    dataset = setup.RandomImages(n)
    resumed = run(world, dataset, method=method, checkpoint=folder, checkpoint_every=2)
    loaded_in_pass = dataset.loaded
    uninterrupted = run(world, setup.RandomImages(n), method=method)
    setup.same(resumed, uninterrupted)
    reruns = 0 if method == "projection" else len({i for r in resumed.values() for t in r.top_images for i in t})
    assert loaded_in_pass == n - 20 + reruns  # the resumed pass read only the images after the checkpoint
    again = setup.RandomImages(n)  # the finished checkpoint: no pass at all
    setup.same(run(world, again, method=method, checkpoint=folder), uninterrupted)
    assert again.loaded == reruns


def test_a_checkpoint_of_another_sweep_or_a_damaged_one_is_refused(world, tmp_path):
    model, expls, vocab = world
    folder = tmp_path / "ckpt"
    run(world, setup.RandomImages(12), checkpoint=folder, checkpoint_every=1)
    with pytest.raises(ValueError, match=r"belongs to another sweep \(layers: the checkpoint has \['block1', "
                                         r"'block2', 'block3'\], this sweep \['block3'\]"):
        run(world, setup.RandomImages(12), layers="block3", checkpoint=folder)
    with pytest.raises(ValueError, match=r"dataset_length: the checkpoint has 12, this sweep 13"):
        run(world, setup.RandomImages(13), checkpoint=folder)
    with pytest.raises(ValueError, match=r"top_images: the checkpoint has 4, this sweep 5"):
        run(world, setup.RandomImages(12), checkpoint=folder, top_images=5)
    other = setup.tiny_model()
    with torch.no_grad():
        other.block1[0].weight[0, 0, 0, 0] += 1
    with pytest.raises(ValueError, match=r"\(model: the checkpoint has '[0-9a-f]{8}"):
        explain(other, setup.loader(setup.RandomImages(12)), expls, layer=setup.LAYERS, vocabulary=vocab,
                top_images=4, words_per_image=3, checkpoint=folder, progress=False)
    data = (folder / "sweep.pt").read_bytes()
    (folder / "sweep.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"sweep checkpoint '.*sweep\.pt' is not a file written by torch.save: no "
                                         r"complete zip archive \(truncated.*delete it to start the sweep over"):
        run(world, setup.RandomImages(12), checkpoint=folder)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"checkpoint=.* must be a folder"):
        run(world, setup.RandomImages(12), checkpoint=tmp_path / "file")
    with pytest.raises(ValueError, match=r"checkpoint_every must be a positive int, got 0"):
        run(world, setup.RandomImages(12), checkpoint=folder, checkpoint_every=0)


@pytest.mark.parametrize("seed", range(4))
def test_the_pair_stash_gives_back_what_a_list_of_rows_would(device, seed):
    """PairStash keeps rows in slots of blocks: random adds (some first_layer, some adding blocks),
    drops (letting blocks go when the rest fits in half of them) and clears must give back the rows
    a plain list would hold, in the order they were added, each with its own filter, image, weight,
    vector and flag; drained block by block, every row once."""
    from lavise_fast.stash import PairStash

    g = torch.Generator().manual_seed(seed)
    C = 5
    stash, naive, serial = PairStash(C, block_rows=1 + seed * 3), [], 0  # blocks of 1, 4, 7, 10 slots
    for step in range(40):
        action = int(torch.randint(0, 10, (), generator=g))
        if action < 6:  # add M rows (M = 0 too)
            M = int(torch.randint(0, 9, (), generator=g))
            z = torch.randn(M, C, generator=g)
            first = torch.rand(M, generator=g) < 0.5 if action == 5 else bool(step % 2)
            filt, images = torch.randint(0, 3, (M,), generator=g), torch.arange(serial, serial + M)
            weights = torch.randn(M, generator=g).double()  # stored as float32
            stash.add(filt.to(device), images.to(device), weights.to(device), z.to(device),
                      first.to(device) if isinstance(first, torch.Tensor) else first)
            flags = first.tolist() if isinstance(first, torch.Tensor) else [first] * M
            naive += [(int(filt[r]), int(images[r]), float(weights[r].float()), z[r], flags[r]) for r in range(M)]
            serial += M
        elif action < 9 and naive:  # drop a random subset
            slots = stash.slots()
            gone = torch.rand(len(slots), generator=g) < 0.4
            stash.drop(slots[gone.to(device)])
            naive = [row for row, out in zip(naive, gone.tolist(), strict=True) if not out]
            B = stash.block_rows  # the rows moved into the first blocks when they fit in half of them
            assert stash.capacity <= max(1, 2 * -(-len(naive) // B) - 1) * B
        elif action == 9:
            stash.clear()
            naive = []
        slots = stash.slots()
        assert stash.rows == len(slots) == len(naive)
        filt, images, weights = (t.cpu() for t in stash.keys(slots))
        z, first = (t.cpu() for t in stash.vectors(slots))
        assert filt.tolist() == [row[0] for row in naive]
        assert images.tolist() == [row[1] for row in naive]
        assert weights.tolist() == [row[2] for row in naive]
        assert first.tolist() == [row[4] for row in naive]
        assert z.shape == (len(naive), C) and z.dtype == torch.float32
        if naive:
            assert torch.equal(z, torch.stack([row[3] for row in naive]))
        assert sorted(stash.slots(ordered=False).tolist()) == sorted(slots.tolist())
        if step % 7 == 6:  # what score reads: every row once, block by block; then nothing
            read = list(stash.drain())
            assert stash.rows == 0 and not list(stash.drain())
            rows = [(int(i), int(f), float(w), vector, bool(flag)) for (fs, ims, ws), zs, flags in read
                    for f, i, w, vector, flag in zip(fs.cpu(), ims.cpu(), ws.cpu(), zs.cpu(), flags.cpu(), strict=True)]
            rows.sort(key=lambda row: row[0])  # images are unique and rising: by image is the order added
            assert [(f, i, w, flag) for i, f, w, _, flag in rows] == [(r[0], r[1], r[2], r[4]) for r in naive]
            if naive:
                assert torch.equal(torch.stack([row[3] for row in rows]), torch.stack([row[3] for row in naive]))
            naive = []
        if step % 11 == 10:  # a reader that stops early (a failing head) leaves an empty, usable stash
            reader = stash.drain()
            next(reader, None)
            reader.close()
            assert stash.rows == 0 and not len(stash.slots())
            naive = []


@pytest.mark.parametrize("seed", range(4))
def test_pruning_the_stash_keeps_exactly_the_pairs_still_among_the_top_images(seed):
    """TopPairs.prune compares each stashed pair with its filter's last top image; a naive
    membership test of (filter, image) in the top images' indices must agree, with tied maxima
    (integers from a small range, -0.0 among them), maxima of -inf, a last batch that leaves slots free, and
    images entering and leaving over many batches."""
    from lavise_fast.stats import TopImages
    from lavise_fast.sweep_state import TopPairs

    g = torch.Generator().manual_seed(seed)
    C, P = 7, 5
    tops, pairs = TopImages(C, P), TopPairs(C, head=None, budget_bytes=1 << 20)
    base = 0
    for n in (3, 4, 6, 2, 9, 1):  # fewer images than P at first: free slots
        maps = torch.randint(-3, 4, (n, C, 2, 2), generator=g).float()
        maps[maps == 0] = -0.0 if seed % 2 else 0.0
        maps[0, n % C] = -math.inf  # a maximum of -inf enters while slots are free
        tops.update(maps, base)
        entered = (tops.indices >= base) & (tops.indices < base + n)
        filt, slot = entered.nonzero(as_tuple=True)
        pairs.add(filt, tops.indices[filt, slot], tops.values[filt, slot], torch.randn(len(filt), C, generator=g))
        base += n
        pairs.prune(tops)
        filt, images, _ = pairs.stash.keys(pairs.stash.slots())
        kept = {(int(f), int(i)) for f, i in zip(filt, images, strict=True)}
        naive = {(k, int(i)) for k in range(C) for i in tops.indices[k] if i >= 0}
        assert kept == naive
        assert pairs.stash.rows == len(naive)


def _random_head(channels: int, unit_input: bool, seed: int):
    """An explainer whose BatchNorm layers hold random running statistics and affine weights (eval mode)."""
    from lavise_fast.explainer import Explainer

    torch.manual_seed(seed)
    expl = setup.random_batch_norm(Explainer(channels, setup.DIM, layer="block3", space="sweep-test",
                                             unit_input=unit_input))
    expl.trained = True
    return expl.eval()


@pytest.mark.parametrize("unit_input", [False, True])
@pytest.mark.parametrize("method", ["projection", "activation"])
def test_the_head_first_layer_per_image_gives_the_words_of_the_head_per_pair(world, monkeypatch, method,
                                                                               unit_input):
    """Applying the head's first layer to each image's map (W A) and pooling that gives the words and
    scores of pooling first and applying the whole head to each pair (forced both ways here)."""
    from lavise_fast import sweep_state

    model, _, vocab = world
    expl = _random_head(24, unit_input, seed=7)
    kw = {"thresholds": torch.rand(24, generator=torch.Generator().manual_seed(3))} if method == "activation" else {}
    results = []
    for per_image in (0, math.inf):  # 0: every batch per image; inf: never
        monkeypatch.setattr(sweep_state, "FIRST_LAYER_PER_IMAGE", per_image)
        results.append(explain(model, setup.loader(setup.RandomImages(23)), expl, layer="block3", vocabulary=vocab,
                               method=method, top_images=4, progress=False, **kw))
    per_image, per_pair = results
    assert per_image.top_images == per_pair.top_images
    assert per_image.words == per_pair.words
    for got, want in zip(per_image.scores, per_pair.scores, strict=True):
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-4, atol=1e-5)


def test_a_stash_of_first_layer_outputs_and_pooled_vectors_scores_like_the_head_and_survives_a_state_round_trip():
    """TopPairs scores stashed rows that hold the head's first layer (flagged) through the rest of the
    head and the others through the whole head, also when both are mixed in one part (after a
    state_dict / load_state_dict round trip) and when a state of older checkpoints has no flags."""
    from lavise_fast.sweep_state import TopPairs

    head = _random_head(24, unit_input=True, seed=11)
    with pytest.raises(ValueError, match=r"first_layer\(\) is the head in eval mode: call explainer.eval\(\) first"):
        head.train().first_layer()
    weight, bias = head.eval().first_layer()
    g = torch.Generator().manual_seed(5)
    z = torch.randn(12, 24, generator=g)
    filt, images = torch.arange(12) % 3, torch.arange(12)
    expected = torch.nn.functional.normalize(head(z), dim=1)
    pairs = TopPairs(24, head)
    pairs.add(filt[:5], images[:5], torch.ones(5), z[:5])
    pairs.add(filt[5:], images[5:], torch.ones(7), torch.nn.functional.normalize(z[5:], dim=1) @ weight.T + bias,
              first_layer=True)
    state = pairs.state_dict()
    assert state["stash_first_layer"].tolist() == [False] * 5 + [True] * 7
    again = TopPairs(24, head)
    again.load_state_dict(state, torch.device("cpu"))
    assert again.stash.vectors(again.stash.slots())[1].tolist() == [False] * 5 + [True] * 7  # both kinds, in order
    for scored in (pairs, again):
        scored.score()
        got, _ = scored.tensors([0, 1, 2], images.view(4, 3).T.contiguous(), setup.DIM, torch.device("cpu"))
        torch.testing.assert_close(got, expected.view(4, 3, -1).transpose(0, 1), rtol=1e-5, atol=1e-6)
    old = {key: value for key, value in state.items() if key != "stash_first_layer"}
    old["stash_z"] = z
    older = TopPairs(24, head)
    older.load_state_dict(old, torch.device("cpu"))
    older.score()
    got, _ = older.tensors([0, 1, 2], images.view(4, 3).T.contiguous(), setup.DIM, torch.device("cpu"))
    torch.testing.assert_close(got, expected.view(4, 3, -1).transpose(0, 1), rtol=1e-5, atol=1e-6)
