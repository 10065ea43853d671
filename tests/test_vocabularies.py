"""The packaged word lists."""

from pathlib import Path

import lavise_fast
from lavise_fast import vocabularies


def test_entities_are_the_official_list_without_blank_or_repeat():
    raw = (Path(lavise_fast.__file__).parent / "data" / "lavise_entities.txt").read_text().splitlines()
    assert len(raw) == 1204
    words = vocabularies.entities()
    assert len(words) == len(set(words)) == 1202
    assert all(w and w == w.strip() for w in words)
    assert words[:3] == [raw[0].strip(), raw[1].strip(), raw[2].strip()]
    assert "tabletop" in words


def test_visual_genome_labels():
    labels = vocabularies.visual_genome_labels()
    assert len(labels) == len(set(labels)) == 1208
    assert labels[:3] == ["tree", "sidewalk", "building"]
