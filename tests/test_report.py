"""The HTML report: its content checked in Python (every filter, escaping, embedded pictures and their
heatmaps, no external resource, atomic writes, bad arguments), and the page itself in a real headless
Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by Selenium): it loads without console
errors, shows every filter, search filters the list, sorting reorders it, and a screenshot is taken."""

from __future__ import annotations

import base64
import copy
import html
import io
import os
import random
import re
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from lavise_fast.data import ConceptWorld
from lavise_fast.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from lavise_fast.diagnostics import filter_flags
from lavise_fast.explainer import Explainer
from lavise_fast.layers import layer_features
from lavise_fast.report import colourmap, display, heatmap_overlay, write_report
from lavise_fast.result import ExplainResult
from lavise_fast.semantics import Static, Vocabulary
from lavise_fast.sweep import explain

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
LAYER = "relu2"
PNG_URL = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
CARD = re.compile(r'<article class="card" id="filter-(\d+)"')
STRANGE_WORDS = ["<script>alert('x')</script>", "salt & pepper", '"quoted"']


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def world():
    return ConceptWorld(size=24, image_size=64, seed=0)


@pytest.fixture(scope="module")
def real(world):
    """A real explain() result: a tiny CNN on 24 ConceptWorld images at 64 px, a Static word space."""
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 8, 3, padding=1), relu1=nn.ReLU(), conv2=nn.Conv2d(8, 10, 3, stride=2, padding=1),
        relu2=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc=nn.Linear(10, 2),
    )).eval()
    words = world.concepts
    space = Static(words, torch.randn(len(words), 16), name="test")
    explainer = Explainer(10, 16, layer=LAYER, space="test", seen=words[::2], unseen=words[1::2]).eval()
    loader = [torch.stack([world[i][0] for i in range(start, start + 8)]) for start in range(0, len(world), 8)]
    result = explain(model, loader, explainer, vocabulary=Vocabulary.from_words(words, space), top_images=5,
                     words_per_image=3, num_words=5, progress=False)
    return model, result


def evaluation_for(result: ExplainResult, concepts: list[str], skip: int | None = None) -> dict:
    """An evaluation dict in the shape lavise_fast.evaluate returns; filter ``skip`` has no ND label."""
    recall = {"recall@5": 0.25, "recall@10": 0.5, "recall@20": 0.75}
    return {**recall, "pairs": 50, "seen": dict(recall), "unseen": {"recall@5": 0.1, "recall@10": None,
                                                                     "recall@20": 0.3},
            "unseen_produced": 0.2, "unseen_words": 5, "iou_threshold": 0.04,
            "dissection": {str(k): {"concept": concepts[i % len(concepts)], "iou": round(0.01 * ((7 * i) % 13), 3)}
                           for i, k in enumerate(result.filters) if k != skip}}


@pytest.fixture(scope="module")
def handmade():
    """A hand-made result: 60 filters (of 100, shuffled) with varied words, some strange, one with none."""
    rng = random.Random(3)
    pool = ["red", "green", "blue", "circle", "square", "stripes", "grass", "water", "sky", "road", *STRANGE_WORDS]
    filters = rng.sample(range(100), 60)
    words, scores, tops, acts = [], [], [], []
    for i, _ in enumerate(filters):
        n = 0 if i == 7 else rng.randint(1, 4)
        words.append(rng.sample(pool, n))
        scores.append(sorted((round(rng.uniform(0.1, 9.0), 4) for _ in range(n)), reverse=True))
        top = rng.sample(range(24), 5)
        tops.append(top)
        acts.append(sorted((rng.uniform(0.5, 3.0) for _ in top), reverse=True))
    result = ExplainResult(filters, words, scores, tops, acts, [rng.uniform(0.1, 1.0) for _ in filters],
                           {"layer": "layer4", "method": "projection", "top_images": 5, "words_per_image": 2,
                            "images": 24, "seen": pool[:5], "unseen": pool[5:]})
    return result, evaluation_for(result, ["grass", "sky", "stripes", "circle"], skip=filters[3])


def decode(url_payload: str) -> np.ndarray:
    image = Image.open(io.BytesIO(base64.b64decode(url_payload)))
    assert image.format == "PNG" and image.mode == "RGB"
    return np.asarray(image)


def as_uint8(picture: torch.Tensor) -> np.ndarray:
    return (picture.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def cards_of(html_text: str) -> list[tuple[int, str]]:
    """(filter, the card's HTML) in page order."""
    starts = [(int(m.group(1)), m.start()) for m in CARD.finditer(html_text)]
    return [(k, html_text[s : html_text.index("</article>", s)]) for k, s in starts]


# ------------------------------------------------------------------------------------------- content


def test_real_result_report_shows_every_filter_with_heatmaps_over_its_top_images(real, world, tmp_path):
    model, result = real
    evaluation = evaluation_for(result, world.concepts)
    path = tmp_path / "report.html"
    returned = write_report(result, path, images=world, model=model, evaluation=evaluation, max_images=3,
                            progress=False)
    assert returned == path and sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    text = path.read_text(encoding="utf-8")
    cards = cards_of(text)
    assert [k for k, _ in cards] == sorted(result.filters) == list(range(10))
    for pos, k in enumerate(result.filters):
        card = dict(cards)[k]
        for word in result.words[pos]:
            assert f">{word}<" in card
        nd = evaluation["dissection"][str(k)]
        assert f'ND <b class="nd">{nd["concept"]}</b>' in card and f'data-iou="{float(nd["iou"])!r}"' in card
        assert len(PNG_URL.findall(card)) == min(3, len(result.top_images[pos]))
    assert len(PNG_URL.findall(text)) == sum(min(3, len(t)) for t in result.top_images)
    assert '<svg class="recall"' in text and "Network-Dissection labels over filters" in text
    assert "the region above its threshold" in text  # the heatmap legend

    # The first picture of every filter is its top image under the filter's own map, threshold and scale
    # (64 px images stay 64 px under the default thumbnail of 96, the page scales them).
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    for pos, k in enumerate(result.filters):
        image = world[result.top_images[pos][0]][0]
        a = layer_features(model, LAYER, image[None])[0, k]
        expected = heatmap_overlay(display(image[None], mean, std, 96)[0], a, result.thresholds[pos],
                                   max(result.top_activations[pos]))
        shown = decode(PNG_URL.search(dict(cards)[k]).group(1))
        assert shown.shape == (64, 64, 3)
        diff = np.abs(shown.astype(int) - as_uint8(expected).astype(int))  # batched vs single conv: rounding
        assert (diff > 1).mean() < 0.005 and diff.mean() < 0.05

    # Without the model the pictures are the plain images, unnormalised; the method gives the same file.
    plain = tmp_path / "plain.html"
    result.report(plain, images=world, evaluation=evaluation, max_images=3, progress=False)
    raw = ConceptWorld(size=24, image_size=64, seed=0, normalize=False)
    first = PNG_URL.search(dict(cards_of(plain.read_text()))[0]).group(1)
    assert np.abs(decode(first).astype(int) - as_uint8(raw[result.top_images[0][0]][0]).astype(int)).max() <= 1
    assert "the region above its threshold" not in plain.read_text()  # no heatmaps without the model
    again = tmp_path / "again.html"
    result.report(again, images=world, model=model, evaluation=evaluation, max_images=3, progress=False)
    assert again.read_bytes() == path.read_bytes()


def test_cards_show_the_simulation_score_the_flags_and_each_group(handmade, tmp_path):
    """The evaluation's simulation score per filter, a badge for each flag of lavise_fast.diagnostics
    (generic, undecided, polysemantic) and, for a filter with two groups, each group's images and words;
    the summary lists chance, shuffled and gain beside the recalls."""
    result, evaluation = handmade
    result = copy.deepcopy(result)
    n = len(result.filters)
    result.settings["scoring"] = "pmi"
    result.words = [["hub", *ws[:2]] if i % 3 else ws for i, ws in enumerate(result.words)]  # generic: 2/3
    result.scores = [[(1.0 if i % 5 else -0.1) - 0.3 * j for j in range(len(ws))]  # every fifth: nothing above 0
                     for i, ws in enumerate(result.words)]
    result.groups = [[{"images": t, "words": ws, "scores": sc}] for t, ws, sc in
                     zip(result.top_images, result.words, result.scores, strict=True)]
    two = 4
    result.groups[two] = [{"images": result.top_images[two][:3], "words": ["zebra", "moon"], "scores": [2.0, 1.0]},
                          {"images": result.top_images[two][3:], "words": ["lagoon"], "scores": [0.7]}]
    recall = {"recall@5": 0.1, "recall@10": 0.2, "recall@20": 0.3}
    evaluation = {**evaluation, "chance": recall, "shuffled": recall, "gain": recall,
                  "rank": {"unseen": {"mean": 3.5, "chance": 6.0, "words": 11, "count": 9}},
                  "simulation": {"words": 0.25, "dissection": 0.5, "random": 0.0, "words_used": 3,
                                 "per_filter": {str(k): round(0.01 * i, 2) for i, k in enumerate(result.filters)}}}
    path = tmp_path / "report.html"
    write_report(result, path, evaluation=evaluation, progress=False)
    text = path.read_text(encoding="utf-8")
    cards = dict(cards_of(text))
    flags = filter_flags(result)
    assert sum("generic" in f for f in flags) > n // 2 and any("undecided" in f for f in flags)
    for pos, k in enumerate(result.filters):
        card = cards[k]
        for flag in ("generic", "undecided", "polysemantic"):
            assert (f'class="flag flag-{flag}"' in card) == (flag in flags[pos]), (k, flag)
        assert f'<b class="sim">{round(0.01 * pos, 2):.3g}</b>' in card
    card = cards[result.filters[two]]
    assert "group 1: 3 top images" in card and "group 2: 2 top images" in card
    assert card.index(">zebra<") < card.index(">moon<") < card.index(">lagoon<")
    assert "recall@10 (all): chance / shuffled lists / gain over shuffled" in text
    assert "mean rank of unseen ground-truth words among 11 unseen words / chance" in text
    assert "simulation score: words / ND labels / random words" in text


def test_thumbnails_are_resized_and_limited(real, world, tmp_path):
    model, result = real
    path = write_report(result, tmp_path / "small.html", images=world, model=model, max_images=2, thumbnail=32,
                        progress=False)
    urls = PNG_URL.findall(path.read_text())
    assert len(urls) == 2 * len(result.filters)
    assert all(decode(u).shape == (32, 32, 3) for u in urls)
    none = write_report(result, tmp_path / "none.html", images=world, model=model, max_images=0, progress=False)
    assert "<img" not in none.read_text()


def test_heatmap_overlay_colours_the_map_and_outlines_the_region_above_the_threshold():
    image = torch.full((3, 32, 32), 0.5)
    a = torch.zeros(8, 8)
    a[2:6, 2:6] = 2.0
    out = heatmap_overlay(image, a, threshold=1.0, scale=2.0)
    assert out.shape == (3, 32, 32) and 0 <= out.min() and out.max() <= 1
    up = F.interpolate(a[None, None], size=(32, 32), mode="bilinear", align_corners=False)[0, 0]
    region = up > 1.0
    white = (out == 1.0).all(0)
    interior = -F.max_pool2d(-region.float()[None, None], 3, stride=1, padding=1)[0, 0] > 0
    assert white.any() and not (white & ~region).any() and not (white & interior).any()
    assert (white | interior)[region].all()  # the outline closes the region
    centre, corner = out[:, 16, 16], out[:, 0, 0]
    assert centre[0] > centre[2] and corner[2] > corner[0]  # hot where active, blue-tinted elsewhere
    torch.testing.assert_close(colourmap(torch.tensor([0.0, 1.0])), torch.tensor([[0.0, 0.0, 0.5], [0.5, 0, 0]]))
    many = heatmap_overlay(image[None].expand(2, 3, 32, 32), torch.stack([a, -a]), torch.tensor([1.0, 1.0]),
                           torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(many[0], out)
    assert not (many[1] == 1.0).all(0).any()  # nothing above the threshold: no outline


def test_many_filters_without_images_all_shown_and_everything_escaped(handmade, tmp_path):
    result, evaluation = handmade
    path = write_report(result, tmp_path / "r.html", evaluation=evaluation, title="<i>my</i> report")
    text = path.read_text(encoding="utf-8")
    cards = cards_of(text)
    assert [k for k, _ in cards] == sorted(result.filters)
    assert "<img" not in text and "top images</summary>" in text
    assert "<script>alert" not in text and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    assert "salt &amp; pepper" in text and "&quot;quoted&quot;" in text and "salt & pepper" not in text
    assert "<title>&lt;i&gt;my&lt;/i&gt; report</title>" in text
    assert text.count("<script>") == 1  # only the page's own script
    k7 = result.filters[7]
    assert "No words" in dict(cards)[k7] and 'data-score=""' in dict(cards)[k7]
    assert 'ND <span class="muted">none</span>' in dict(cards)[result.filters[3]]
    unseen = set(result.settings["unseen"])
    for k, words in zip(result.filters, result.words, strict=True):  # words the explainer never saw are marked
        for word in words:
            marked = f'<span class="w unseen" title="{html.escape(word)} (unseen in training)">' in dict(cards)[k]
            assert marked == (word in unseen)
    # No external resource of any kind: every src/href is a data: URL or an anchor.
    links = re.findall(r'(?:src|href)="([^"]*)"', text)
    assert links and all(link.startswith(("data:", "#")) for link in links)
    assert not re.search(r"https?:|url\(|@import|//cdn", text)
    # The distribution of concepts: the most frequent top word and its count come first.
    top_words = [w[0] for w in result.words if w]
    best = max(sorted(set(top_words)), key=top_words.count)
    first_row = re.search(r'<button type="button" class="bar-row" data-word="([^"]*)"', text).group(1)
    assert first_row == html.escape(best)


def test_written_atomically_and_left_unchanged_on_failure(handmade, world, tmp_path):
    result, _ = handmade
    path = tmp_path / "r.html"
    write_report(result, path, progress=False)
    before = path.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"] and (path.stat().st_mode & 0o777) == 0o644
    with pytest.raises(ValueError, match="has no item 2[0-3]"):  # fails while rendering, before anything is written
        write_report(result, path, images=[world[i] for i in range(20)], progress=False)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["r.html"]


def test_progress_bar_only_when_asked(real, world, tmp_path, capsys):
    model, result = real
    write_report(result, tmp_path / "a.html", images=world, model=model, max_images=1, progress=True)
    assert "report images" in capsys.readouterr().err
    write_report(result, tmp_path / "b.html", images=world, model=model, max_images=1, progress=False)
    assert capsys.readouterr().err == ""


def test_bad_arguments_are_clear_errors(real, handmade, world, tmp_path):
    model, result = real
    path = tmp_path / "r.html"
    with pytest.raises(ValueError, match="needs images"):
        write_report(result, path, model=model)
    with pytest.raises(TypeError, match=r"images\[\d+\] must be a float image tensor"):
        write_report(result, path, images=[(np.zeros((64, 64, 3)),)] * 24, progress=False)
    with pytest.raises(TypeError, match="pass its .dataset"):
        write_report(result, path, images=torch.utils.data.DataLoader(world), progress=False)
    with pytest.raises(ValueError, match="max_images must be an int >= 0"):
        write_report(result, path, max_images=-1)
    with pytest.raises(ValueError, match="thumbnail must be an int >= 1"):
        write_report(result, path, thumbnail=0)
    with pytest.raises(TypeError, match="evaluation must be the dict"):
        write_report(result, path, evaluation=[0.5])
    with pytest.raises(ValueError, match="std must be 3 floats"):
        write_report(result, path, std=(0.2, 0.0, 0.2))
    with pytest.raises(ValueError, match="is a directory"):
        write_report(result, tmp_path)
    broken = ExplainResult(result.filters, result.words[:-1], result.scores, result.top_images,
                           result.top_activations, result.thresholds, result.settings)
    with pytest.raises(ValueError, match="inconsistent"):
        write_report(broken, path)
    wide, _ = handmade  # explains filters up to 99 of a layer that has 10
    with pytest.raises(ValueError, match="has 10 filters"):
        write_report(ExplainResult(**{**wide.__dict__, "settings": {"layer": LAYER}}), path, images=world,
                     model=model, progress=False)
    assert not path.exists()


# ------------------------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def browser():
    """Headless Debian chromium through Selenium, with the driver's path given explicitly so that Selenium
    Manager never runs (nothing is downloaded). Missing chromium fails the test unless
    LAVISE_FAST_SKIP_BROWSER=1."""
    if os.environ.get("LAVISE_FAST_SKIP_BROWSER") == "1":
        pytest.skip("LAVISE_FAST_SKIP_BROWSER=1")
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found: the report's browser test needs Debian's chromium; run the "
                    "test set-up (`make browser`, i.e. `apt-get install -y chromium chromium-driver`), or set "
                    "LAVISE_FAST_SKIP_BROWSER=1 to skip this test", pytrace=False)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed: pip install -e '.[dev]'", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,1600", "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def open_page(driver, path) -> list[dict]:
    """Loads ``path`` and returns the console messages logged while it loaded."""
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(path.resolve().as_uri())
    assert driver.execute_script("return document.body.getAttribute('data-ready')") == "1", "the script did not run"
    return driver.get_log("browser")


def visible_filters(driver) -> list[int]:
    return driver.execute_script(
        "return Array.prototype.filter.call(document.querySelectorAll('#cards > article.card'),"
        " function (c) { return c.getClientRects().length > 0; })"
        ".map(function (c) { return parseInt(c.getAttribute('data-filter'), 10); });")


def type_search(driver, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.ID, "search")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.BACKSPACE)
    if text:
        box.send_keys(text)


def test_page_in_headless_chromium(browser, real, handmade, world, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    # The console capture works (else "no errors" below would prove nothing).
    probe = tmp_path / "probe.html"
    probe.write_text("<!DOCTYPE html><html><body><script>console.error('probe')</script></body></html>")
    browser.get(probe.resolve().as_uri())
    assert any("probe" in entry["message"] for entry in browser.get_log("browser"))

    # The real report with heatmaps: loads cleanly, every filter and every picture shown.
    model, result = real
    path = write_report(result, tmp_path / "real.html", images=world, model=model,
                        evaluation=evaluation_for(result, world.concepts), progress=False)
    log = open_page(browser, path)
    assert [e for e in log if e["level"] in ("SEVERE", "WARNING")] == [], log
    assert sorted(visible_filters(browser)) == sorted(result.filters)
    assert browser.execute_script("return Array.prototype.every.call(document.images,"
                                  " function (i) { return i.complete && i.naturalWidth > 0; })")
    assert browser.execute_script("return document.images.length") == sum(min(8, len(t)) for t in result.top_images)
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot))
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    assert Image.open(shot).size[0] > 500

    # The hand-made report: 60 filters, search by word, by a strange word, by filter number, then sorting.
    result, evaluation = handmade
    path = write_report(result, tmp_path / "many.html", images=world, evaluation=evaluation, max_images=2,
                        progress=False)
    log = open_page(browser, path)
    assert [e for e in log if e["level"] in ("SEVERE", "WARNING")] == [], log
    everything = sorted(result.filters)
    assert visible_filters(browser) == everything  # and in filter order
    nd = {int(k): v["concept"] for k, v in evaluation["dissection"].items()}

    def described_by(term: str) -> list[int]:
        return sorted(k for k, words in zip(result.filters, result.words, strict=True)
                      if any(term in w.lower() for w in [*words, nd.get(k, "")]))

    for term in ("water", "&", "<script>"):
        expected = described_by(term)
        assert 0 < len(expected) < len(everything)
        type_search(browser, term)
        assert visible_filters(browser) == expected, term
        shown = browser.find_element(By.ID, "shown").text
        assert shown == f"{len(expected)} of {len(everything)} filters shown"
    target = result.filters[10]
    type_search(browser, str(target))
    assert visible_filters(browser) == [target]
    type_search(browser, "")
    assert visible_filters(browser) == everything

    sort = Select(browser.find_element(By.ID, "sort"))
    top_score = {k: (s[0] if s else float("-inf")) for k, s in zip(result.filters, result.scores, strict=True)}
    iou = {k: evaluation["dissection"].get(str(k), {}).get("iou", float("-inf")) for k in result.filters}
    sort.select_by_value("score")
    assert visible_filters(browser) == sorted(everything, key=lambda k: (-top_score[k], k))
    sort.select_by_value("iou")
    assert visible_filters(browser) == sorted(everything, key=lambda k: (-iou[k], k))
    type_search(browser, "water")  # search and sorting together
    assert visible_filters(browser) == sorted(described_by("water"), key=lambda k: (-iou[k], k))
    sort.select_by_value("filter")
    assert visible_filters(browser) == described_by("water")

    # A bar of the distribution of concepts searches its word.
    row = browser.find_element(By.CSS_SELECTOR, ".bar-row")
    word = row.get_attribute("data-word")
    row.click()
    assert browser.find_element(By.ID, "search").get_attribute("value") == word
    assert visible_filters(browser) == described_by(word.lower())
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    assert browser.save_screenshot(str(tmp_path / "search.png"))
