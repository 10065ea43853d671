"""Multi-layer sweeps (one forward pass, each layer its own statistics) and checkpoints: a sweep
killed mid-way (SIGKILL) resumes to the result of an uninterrupted run; a checkpoint of another
sweep, or a damaged one, is refused with a clear error."""

from __future__ import annotations

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

from lavise_fast.sweep import explain

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def world():
    return setup.tiny_model(), setup.explainers(), setup.vocabulary()


def run(world, dataset, layers=setup.LAYERS, **kw):
    model, expls, vocab = world
    kw = {"top_images": 4, "words_per_image": 3, "progress": False, **kw}
    chosen = {name: expls[name] for name in layers} if isinstance(layers, list) else expls[layers]
    return explain(model, setup.loader(dataset), chosen, layer=layers, vocabulary=vocab, **kw)


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
