"""Distributed sweeps on torch.distributed with gloo, two processes on this machine (loopback):
the same words, top images and thresholds as one process; a dying rank fails the run clearly."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import sweep_setup as setup
import torch

from lavise_fast.result import ExplainResult
from lavise_fast.sweep import explain

SCRIPT = Path(__file__).with_name("distributed_sweep.py")


def single_process(n, batch_size, layers, method):
    return explain(setup.model_for(layers), setup.loader(setup.RandomImages(n), batch_size),
                   setup.explainers_for(layers), layer=layers,
                   vocabulary=setup.vocabulary(), top_images=4, words_per_image=3, method=method, progress=False)


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}


def test_two_gloo_processes_under_torchrun_equal_one_process(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    from distributed_sweep import CASES

    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(SCRIPT), str(out)], env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    for name, (n, batch_size, layers, method) in CASES.items():
        expected = single_process(n, batch_size, layers, method)
        got = data["results"][name]
        if isinstance(expected, dict):
            got = {layer: ExplainResult(**r) for layer, r in got.items()}
        else:
            got = ExplainResult(**got)
        if name == "exact":
            setup.same(got, expected)
            continue
        for layer in expected:  # the sketch is no longer exact: thresholds within its error, the rest equal
            a, b = got[layer], expected[layer]
            assert (a.words, a.top_images, a.top_activations) == (b.words, b.top_images, b.top_activations)
            for x, y in zip(a.scores, b.scores, strict=True):  # the ranks embed their pairs in other batches
                assert x == pytest.approx(y, rel=1e-5, abs=1e-5)
            assert a.thresholds == pytest.approx(b.thresholds, rel=0.02, abs=1e-3)
    # training: the sharded feature pass gathers the same rows in the same order, and the same head
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the ranks (OMP_NUM_THREADS=1): the same float reductions in training
    try:
        vectors, labels, expl = setup.reference_training()
    finally:
        torch.set_num_threads(threads)
    training = torch.load(str(out) + ".training.pt", weights_only=True)
    assert training["labels"] == labels and torch.equal(training["vectors"], vectors)
    for name, value in expl.state_dict().items():
        assert torch.equal(training["head"][name], value), name
    # the feature cache: merged from the ranks' files into one .npy that every rank maps, or (rank 0 blind to
    # the other rank's file) gathered in memory; the same rows either way, and no rank file left behind
    for rank in torch.load(str(out) + ".cache.pt", weights_only=False):
        assert rank["merged"]["type"] == "memmap" and rank["gathered"]["type"] == "Tensor"
        for name in ("merged", "gathered"):
            assert rank[name]["labels"] == labels and torch.equal(rank[name]["vectors"], vectors), name
    assert not list(tmp_path.glob(".*.raw"))
    for name in ("merged", "gathered"):  # one process reads what the ranks wrote, with the same key
        path = tmp_path / f"results.json.{name}.npy"
        written = path.stat().st_mtime_ns
        rows, names, _ = setup.pooled(cache=path)
        assert path.stat().st_mtime_ns == written and names == labels
        assert torch.equal(torch.from_numpy(np.array(rows)), vectors)
    # each rank read its own share of the images in the pass (23 and 22 of 45)
    assert [loaded["layers"] for loaded in data["loaded"]] == [23, 22]
    assert [loaded["exact"] for loaded in data["loaded"]][0] >= 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_rank_that_dies_fails_the_others_with_a_clear_message(tmp_path):
    port = free_port()
    procs = []
    for rank in (0, 1):
        rank_env = {**env(), "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, str(SCRIPT), str(tmp_path / "out.json"), "--die-at", "5",
                                       "--timeout", "30"], env=rank_env, stderr=subprocess.PIPE, text=True))
    start = time.monotonic()
    try:
        _, err0 = procs[0].communicate(timeout=120)
        procs[1].communicate(timeout=30)
    finally:
        for p in procs:
            p.kill()
    assert procs[1].returncode == 3  # the dying rank
    assert procs[0].returncode != 0 and time.monotonic() - start < 120
    assert "distributed sweep, rank 0 of 2: exchanging the top images, sketches and embeddings with the other ranks " \
           "failed, most likely because another rank died" in err0, err0[-2000:]
    assert not (tmp_path / "out.json").exists()
