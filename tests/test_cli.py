"""The ``lavise-fast`` command, in process through ``lavise_fast.cli.main``: every subcommand's help,
one-line errors with exit status 2 for bad arguments and unreadable inputs, and a small end-to-end
``train`` -> ``explain`` -> ``evaluate`` -> ``report`` -> ``compare`` on inputs the tests write (a tiny
TorchScript model, a folder of PNGs, a small ConceptWorld)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from lavise_fast import cli, models
from lavise_fast.result import ExplainResult

COMMANDS = ["demo", "train", "explain", "evaluate", "report", "compare", "export-onnx"]
WORLD = ["--world", "24", "--world-image-size", "32", "--world-objects", "1", "2"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(capsys, command: str, *argv: str) -> str:
    """Runs ``lavise-fast command argv``, checks exit status 2 and exactly one line on stderr; returns it."""
    code, _, err = run(capsys, command, *argv)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"lavise-fast {command}: error: ")
    return lines[0]


# ------------------------------------------------------------------------------------------------ inputs


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny TorchScript model (an nn.Sequential: its layers are named "0" ... "6"), a folder of 6 PNGs
    (one in a subfolder, plus a text file that is not an image), and an explainer trained by the CLI."""
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict([
        ("0", nn.Conv2d(3, 8, 3, padding=1)), ("1", nn.ReLU()), ("2", nn.Conv2d(8, 12, 3, stride=2, padding=1)),
        ("3", nn.ReLU()), ("4", nn.AdaptiveAvgPool2d(1)), ("5", nn.Flatten()), ("6", nn.Linear(12, 3)),
    ])).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(model).save(str(root / "model.pt"))
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        pixels = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / ("sub" if i == 5 else ".") / f"img{i}.png")
    (images / "notes.txt").write_text("not an image")
    return {"root": root, "model": str(root / "model.pt"), "images": str(images), "torch_model": model}


@pytest.fixture(scope="module")
def explainer_file(files):
    out = files["root"] / "explainer.pt"
    code = cli.main(["train", "--model", files["model"], "--layer", "3", *WORLD, "--epochs", "2", "--no-progress",
                     "--out", str(out)])
    assert code == 0
    return str(out)


# ------------------------------------------------------------------------------------------------ help


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command_has_examples(capsys, command):
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    assert "examples:" in out
    assert f"lavise-fast {command}" in out.split("examples:")[1]


def test_top_level_help_lists_every_command(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in COMMANDS:
        assert command in out


def test_argparse_errors_exit_2(capsys):
    assert run(capsys)[0] == 2  # no command
    assert run(capsys, "explain", "--top-images", "0", "--model", "m", "--explainer", "e", "--out", "o")[0] == 2
    assert run(capsys, "demo", "--model", "vgg")[0] == 2
    assert run(capsys, "explain", "--filters", "3-1", "--model", "m", "--explainer", "e", "--out", "o")[0] == 2


# ------------------------------------------------------------------------------------------------ errors


def test_unreadable_inputs_exit_2_with_one_line(capsys, files, explainer_file, tmp_path):
    model, images = files["model"], files["images"]
    out = str(tmp_path / "r.json")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    line = one_line_error(capsys, "explain", "--model", model, "--explainer", str(garbage), "--images", images,
                          "--out", out)
    assert "garbage.pt" in line
    line = one_line_error(capsys, "explain", "--model", str(garbage), "--explainer", explainer_file,
                          "--images", images, "--out", out)
    assert "not a TorchScript file" in line
    line = one_line_error(capsys, "explain", "--model", model, "--explainer", explainer_file,
                          "--images", str(tmp_path / "missing"), "--out", out)
    assert "missing" in line
    line = one_line_error(capsys, "explain", "--model", model, "--explainer", explainer_file, "--out", out)
    assert "--images" in line
    line = one_line_error(capsys, "explain", "--model", model, "--explainer", explainer_file, "--images", images,
                          "--world", "4", "--out", out)
    assert "one image set" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no image" in one_line_error(capsys, "explain", "--model", model, "--explainer", explainer_file,
                                        "--images", str(empty), "--out", out)
    line = one_line_error(capsys, "explain", "--model", model, "--explainer", explainer_file, "--images", images,
                          "--layer", "1.weight", "--out", out)
    assert "TorchScript" in line
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    assert "bad.json" in one_line_error(capsys, "report", "--result", str(bad_json), "--out", str(tmp_path / "r.html"))
    assert "does not exist" in one_line_error(capsys, "compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"))
    if importlib.util.find_spec("lavise_fast.onnx") is None:
        line = one_line_error(capsys, "export-onnx", explainer_file, "--out", str(tmp_path / "x.onnx"))
        assert "not available yet" in line


def test_model_errors_exit_2(capsys, tmp_path, explainer_file, files):
    common = ["--explainer", explainer_file, "--images", files["images"], "--out", str(tmp_path / "r.json")]
    assert "not a file" in one_line_error(capsys, "explain", "--model", "resnet_nope", *common)
    assert "--weights" in one_line_error(capsys, "explain", "--model", "resnet18", *common)
    line = one_line_error(capsys, "explain", "--model", str(tmp_path / "nothing.pt"), *common)
    assert "no such file" in line
    weights = tmp_path / "w.pth"
    torch.save({"fc.weight": torch.zeros(2, 3)}, weights)
    assert "does not fit" in one_line_error(capsys, "explain", "--model", "resnet18", "--weights", str(weights),
                                            *common)
    line = one_line_error(capsys, "explain", "--model", files["model"], "--weights", str(weights), *common)
    assert "TorchScript" in line


@pytest.mark.parametrize("workers", [[], ["--workers", "0"]])
def test_corrupted_image_in_folder_is_skipped_with_a_one_line_warning(capfd, tmp_path, files, explainer_file,
                                                                       workers):
    """In this process or (the default) in DataLoader workers, whose stderr is the command's: captured at
    the file descriptor."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(folder / "a.png")
    (folder / "b.png").write_bytes(b"\x89PNG truncated")
    out = tmp_path / "r.json"
    code = cli.main(["explain", "--model", files["model"], "--explainer", explainer_file, "--images", str(folder),
                     "--vocabulary", "explainer", *workers, "--no-progress", "--out", str(out)])
    err = capfd.readouterr().err
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("lavise-fast explain: warning: skipped item 1: image file ") and "b.png" in lines[0]
    result = ExplainResult.load(out)
    assert result.settings["images"] == 2 and result.settings["target"]["files"] == ["a.png", "b.png"]


def test_evaluate_refuses_an_image_folder_target(capsys, tmp_path, files, explainer_file):
    result = tmp_path / "r.json"
    assert cli.main(["explain", "--model", files["model"], "--explainer", explainer_file, "--images",
                     files["images"], "--resize", "40", "--crop", "32", "--no-progress", "--out", str(result)]) == 0
    capsys.readouterr()
    line = one_line_error(capsys, "evaluate", "--model", files["model"], "--result", str(result),
                          "--out", str(tmp_path / "e.json"))
    assert "no masks" in line


# ------------------------------------------------------------------------------------------------ end to end


def test_train_explain_report_end_to_end(capsys, files, explainer_file, tmp_path):
    from lavise_fast.explainer import Explainer

    explainer = Explainer.load(explainer_file)
    assert explainer.layer == "3" and explainer.channels == 12
    assert explainer.seen and explainer.unseen

    result_path = tmp_path / "result.json"
    code, out, _ = run(capsys, "explain", "--model", files["model"], "--explainer", explainer_file,
                       "--images", files["images"], "--resize", "40", "--crop", "32", "--vocabulary", "explainer",
                       "--top-images", "3", "--words-per-image", "2", "--num-words", "4", "--batch-size", "4",
                       "--no-progress", "--out", str(result_path))
    assert code == 0, out
    assert "explained 12 filters of 3 on 6 images" in out
    result = ExplainResult.load(result_path)
    assert len(result.filters) == 12 and all(len(w) <= 4 for w in result.words)
    target = result.settings["target"]
    # Sorted relative paths are the image indices; the text file is not an image.
    assert target["kind"] == "images"
    assert target["files"] == ["img0.png", "img1.png", "img2.png", "img3.png", "img4.png", "sub/img5.png"]
    assert all(0 <= i < 6 for images in result.top_images for i in images)

    # The report finds the images through the result's settings; --model adds the activation maps.
    report = tmp_path / "report.html"
    code, out, _ = run(capsys, "report", "--result", str(result_path), "--model", files["model"],
                       "--max-images", "2", "--no-progress", "--out", str(report))
    assert code == 0
    text = report.read_text(encoding="utf-8")
    assert text.count("data:image/png;base64,") >= 12
    assert "with pictures" in out
    code, _, _ = run(capsys, "report", "--result", str(result_path), "--no-images", "--out", str(tmp_path / "w.html"))
    assert code == 0 and "data:image/png" not in (tmp_path / "w.html").read_text(encoding="utf-8")

    # A second result on other filters compares against nothing: compare needs the same filters.
    other = tmp_path / "other.json"
    assert cli.main(["explain", "--model", files["model"], "--explainer", explainer_file, "--images",
                     files["images"], "--resize", "40", "--crop", "32", "--vocabulary", "explainer",
                     "--filters", "0-3", "--no-progress", "--out", str(other)]) == 0
    capsys.readouterr()
    assert "different filters" in one_line_error(capsys, "compare", str(result_path), str(other))
    svg, table = tmp_path / "c.svg", tmp_path / "c.csv"
    code, out, _ = run(capsys, "compare", str(result_path), str(result_path), "--names", "x", "y",
                       "--out", str(svg), "--table", str(table))
    assert code == 0 and "difference" in out
    assert svg.read_text(encoding="utf-8").startswith("<svg")
    assert table.read_text(encoding="utf-8").startswith("concept,count_a,count_b")


def test_explain_and_evaluate_on_the_world(capsys, files, explainer_file, tmp_path):
    result_path, evaluation_path = tmp_path / "result.json", tmp_path / "evaluation.json"
    assert cli.main(["explain", "--model", files["model"], "--explainer", explainer_file, *WORLD, "--world-start",
                     "24", "--vocabulary", "explainer", "--top-images", "4", "--no-progress",
                     "--out", str(result_path)]) == 0
    capsys.readouterr()
    # evaluate rebuilds the same 24 world images (from index 24) from the result's settings.
    code, out, _ = run(capsys, "evaluate", "--model", files["model"], "--result", str(result_path), "--no-progress",
                       "--out", str(evaluation_path))
    assert code == 0
    assert "recall@10" in out and "unseen words named by some filter" in out
    evaluation = json.loads(evaluation_path.read_text(encoding="utf-8"))
    assert {"recall@5", "recall@10", "recall@20", "seen", "unseen", "dissection"} <= set(evaluation)
    # A reference of another size is refused in one line.
    line = one_line_error(capsys, "evaluate", "--model", files["model"], "--result", str(result_path),
                          "--world", "10", "--out", str(evaluation_path))
    assert "24" in line
    report = tmp_path / "report.html"
    assert cli.main(["report", "--result", str(result_path), "--evaluation", str(evaluation_path), "--max-images",
                     "1", "--no-progress", "--out", str(report)]) == 0
    assert "recall" in report.read_text(encoding="utf-8")


def test_several_explainers_explain_their_layers_in_one_pass(capsys, files, explainer_file, tmp_path):
    """Two explainers (layers "1" and "3") in one call write one result per layer into the --out folder,
    each equal to the one-explainer run of its layer, whatever the order of the explainers."""
    from lavise_fast.explainer import Explainer

    early = str(tmp_path / "early.pt")
    assert cli.main(["train", "--model", files["model"], "--layer", "1", *WORLD, "--epochs", "2", "--no-progress",
                     "--out", early]) == 0
    words = tmp_path / "words.txt"  # the vocabulary of both runs: every word of both explainers
    union = dict.fromkeys(w for path in (early, explainer_file) for e in [Explainer.load(path)]
                          for w in (*e.seen, *e.unseen))
    words.write_text("\n".join(union), encoding="utf-8")
    common = ["--model", files["model"], "--images", files["images"], "--resize", "40", "--crop", "32",
              "--vocabulary", str(words), "--top-images", "3", "--num-words", "4", "--batch-size", "4",
              "--no-progress"]
    folder, swapped = tmp_path / "results", tmp_path / "swapped"
    code, out, _ = run(capsys, "explain", *common, "--explainer", early, explainer_file, "--out", str(folder))
    assert code == 0, out
    assert sorted(p.name for p in folder.iterdir()) == ["1.json", "3.json"]
    assert "explained 8 filters of 1" in out and "explained 12 filters of 3" in out
    assert cli.main(["explain", *common, "--explainer", explainer_file, early, "--out", str(swapped)]) == 0
    for layer, explainer in (("1", early), ("3", explainer_file)):
        single = tmp_path / f"single{layer}.json"
        assert cli.main(["explain", *common, "--explainer", explainer, "--out", str(single)]) == 0
        one = ExplainResult.load(single)
        assert one.settings["layer"] == layer
        for other in (ExplainResult.load(folder / f"{layer}.json"), ExplainResult.load(swapped / f"{layer}.json")):
            assert other.settings["layer"] == layer
            assert other.words == one.words and other.top_images == one.top_images
    capsys.readouterr()
    line = one_line_error(capsys, "explain", *common, "--explainer", explainer_file, explainer_file,
                          "--out", str(folder))
    assert "both for layer '3'" in line
    line = one_line_error(capsys, "explain", *common, "--layer", "3", "--explainer", early, explainer_file,
                          "--out", str(folder))
    assert "--layer is for one explainer" in line
    line = one_line_error(capsys, "explain", *common, "--explainer", early, explainer_file,
                          "--out", str(tmp_path / "single1.json"))
    assert "is a file" in line and "folder" in line


def test_torchvision_model_with_weights(capsys, tmp_path, files, explainer_file):
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.get_model("squeezenet1_1", weights=None, num_classes=5)
    weights = tmp_path / "squeeze.pth"
    torch.save({"state_dict": model.state_dict()}, weights)
    loaded = models.load_model("squeezenet1_1", str(weights))
    assert loaded.classifier[1].out_channels == 5
    explainer = tmp_path / "e.pt"
    code, out, _ = run(capsys, "train", "--model", "squeezenet1_1", "--weights", str(weights), "--layer",
                       "features.3", "--world", "8", "--world-image-size", "64", "--epochs", "1", "--no-progress",
                       "--out", str(explainer))
    assert code == 0, out
    assert "features.3" in out


def test_demo_command_prints_the_summary(capsys, monkeypatch, tmp_path):
    import lavise_fast.demo as demo

    real = demo.run_demo

    def tiny(out_dir, model, **kwargs):
        return real(out_dir, model, **kwargs, image_size=32, reference_size=24, target_size=12, train_size=32,
                    epochs=1, batch_size=16, widths=(4, 8, 8, 8), explainer_epochs=2, top_images=4)

    monkeypatch.setattr(demo, "run_demo", tiny)
    threads = torch.get_num_threads()
    try:
        code, out, _ = run(capsys, "demo", "--out", str(tmp_path / "demo"), "--no-progress", "--threads", "1")
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    assert "recall@10" in out and "filters explained" in out and "report.html" in out
    assert (tmp_path / "demo" / "report.html").is_file()


def torchrun_cli(*argv: str) -> subprocess.CompletedProcess:
    """``lavise-fast *argv --distributed`` in two gloo processes under torchrun (one thread each)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "lavise_fast.cli", *argv, "--distributed", "--timeout", "60"], env=env,
                          capture_output=True, text=True, timeout=300)


def test_explain_distributed_under_torchrun_equals_one_process(capsys, files, explainer_file, tmp_path):
    common = ["explain", "--model", files["model"], "--explainer", explainer_file, *WORLD, "--vocabulary",
              "explainer", "--top-images", "4", "--batch-size", "4", "--no-progress"]  # 12 images per rank
    assert cli.main([*common, "--out", str(tmp_path / "one.json")]) == 0
    proc = torchrun_cli(*common, "--out", str(tmp_path / "two.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("explained 12 filters of 3 on 24 images") == 1  # rank 0 reports and writes
    one, two = (ExplainResult.load(tmp_path / name) for name in ("one.json", "two.json"))
    assert (two.words, two.top_images, two.top_activations) == (one.words, one.top_images, one.top_activations)
    assert two.thresholds == pytest.approx(one.thresholds, rel=0.02, abs=1e-3)  # the merged sketch's error


def test_train_distributed_under_torchrun_equals_one_process(files, tmp_path):
    from lavise_fast.explainer import Explainer

    common = ["train", "--model", files["model"], "--layer", "3", *WORLD, "--epochs", "2", "--no-progress"]
    assert cli.main([*common, "--out", str(tmp_path / "one.pt")]) == 0
    proc = torchrun_cli(*common, "--out", str(tmp_path / "two.pt"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained an explainer for 3") == 1  # rank 0 reports and writes
    one, two = (Explainer.load(tmp_path / name) for name in ("one.pt", "two.pt"))
    assert (two.seen, two.unseen) == (one.seen, one.unseen)
    for (name, a), b in zip(one.state_dict().items(), two.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)  # float reductions: 1 thread vs 2


def test_explain_distributed_outside_torchrun_and_checkpoint_resume(capsys, monkeypatch, files, explainer_file,
                                                                  tmp_path):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    common = ["explain", "--model", files["model"], "--explainer", explainer_file, *WORLD, "--vocabulary",
              "explainer", "--top-images", "4", "--batch-size", "4", "--no-progress"]
    line = one_line_error(capsys, *common, "--distributed", "--out", str(tmp_path / "r.json"))
    assert "--distributed runs under torchrun" in line and "RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT" in line
    ckpt = tmp_path / "ckpt"
    first = [*common, "--checkpoint", str(ckpt), "--checkpoint-every", "2", "--out", str(tmp_path / "a.json")]
    assert cli.main(first) == 0
    assert (ckpt / "sweep.pt").is_file()
    assert cli.main([*common, "--checkpoint", str(ckpt), "--out", str(tmp_path / "b.json")]) == 0  # resumes: no pass
    assert ExplainResult.load(tmp_path / "a.json").words == ExplainResult.load(tmp_path / "b.json").words
    line = one_line_error(capsys, *common, "--top-images", "5", "--checkpoint", str(ckpt),
                          "--out", str(tmp_path / "c.json"))
    assert "belongs to another sweep (top_images: the checkpoint has 4, this sweep 5)" in line


def test_image_folders_decode_in_worker_processes_by_default_with_the_same_result(capsys, files, explainer_file,
                                                                                 tmp_path, monkeypatch):
    from lavise_fast.loaders import default_workers
    from lavise_fast.result import ExplainResult

    workers = []
    real = torch.utils.data.DataLoader

    def counting(*args, **kwargs):
        workers.append(kwargs.get("num_workers", 0))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.utils.data, "DataLoader", counting)
    results = {}
    for name, extra in (("default", []), ("main", ["--workers", "0"])):
        out = tmp_path / f"{name}.json"
        code, printed, _ = run(capsys, "explain", "--model", files["model"], "--explainer", explainer_file,
                               "--images", files["images"], "--resize", "40", "--crop", "32", "--batch-size", "4",
                               "--top-images", "3", *extra, "--no-progress", "--out", str(out))
        assert code == 0, printed
        results[name] = ExplainResult.load(out)
    assert workers[0] == default_workers() >= 1 and workers[-1] == 0
    a, b = results["default"], results["main"]
    assert (a.words, a.top_images, a.thresholds) == (b.words, b.top_images, b.thresholds)
