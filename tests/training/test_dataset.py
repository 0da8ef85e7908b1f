"""Pair datasets: both layouts are read, and a broken dataset is reported with counts and the files at fault."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from kontext_studio.training.buckets import bucket_for, fit_to_bucket
from kontext_studio.training.dataset import DatasetError, Severity, check_dataset
from kontext_studio.training.synthetic import make_pairs, shapes_picture


def test_ai_toolkit_layout_pairs_targets_with_same_name_sources_and_captions(tmp_path: Path) -> None:
    root = make_pairs(tmp_path / "ds", 4, rule="invert", size=(64, 64))
    report = check_dataset(root, min_side=64)
    assert report.ok and report.layout == "ai-toolkit" and len(report.usable) == 4
    first = sorted(report.usable, key=lambda s: s.pair.name)[0]
    assert first.pair.source == root / "control" / "pair000.png"
    assert first.pair.target == root / "pair000.png"
    assert first.instruction == "invert the colours"


def test_manifest_jsonl_and_csv_read_the_same_pairs(tmp_path: Path) -> None:
    root = make_pairs(tmp_path / "ds", 3, rule="swap", size=(64, 64), layout="manifest")
    from_jsonl = check_dataset(root, min_side=64)
    rows = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]
    (root / "manifest.jsonl").unlink()
    (root / "pairs.csv").write_text("source,target,instruction\n" + "".join(
        f"{r['source']},{r['target']},{r['instruction']}\n" for r in rows))
    from_csv = check_dataset(root / "pairs.csv", min_side=64)
    assert from_jsonl.layout == from_csv.layout == "manifest"
    assert len(from_jsonl.usable) == len(from_csv.usable) == 3
    assert from_jsonl.data_hash() == from_csv.data_hash()


def test_default_instruction_fills_missing_captions_as_a_warning(tmp_path: Path) -> None:
    root = make_pairs(tmp_path / "ds", 2, size=(64, 64))
    for txt in root.glob("*.txt"):
        txt.unlink()
    refused = check_dataset(root, min_side=64)
    assert not refused.ok and [p.code for p in refused.problems] == ["missing_caption"]
    assert refused.problems[0].severity is Severity.ERROR
    accepted = check_dataset(root, default_instruction="make it brighter", min_side=64)
    assert accepted.ok and {s.instruction for s in accepted.usable} == {"make it brighter"}
    assert accepted.problems[0].severity is Severity.WARNING


def broken_dataset(root: Path) -> Path:
    """Two good pairs plus one of each problem the check must find."""
    make_pairs(root, 2, size=(96, 96))
    control = root / "control"
    shapes_picture((96, 96), 50).save(root / "orphan.png")  # target without source
    (root / "orphan.txt").write_text("x")
    shapes_picture((96, 96), 51).save(control / "lonely.png")  # source without target
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # unreadable target
    shapes_picture((96, 96), 52).save(control / "broken.png")
    (root / "broken.txt").write_text("x")
    shapes_picture((40, 40), 53).save(root / "tiny.png")  # too small
    shapes_picture((40, 40), 53).save(control / "tiny.png")
    (root / "tiny.txt").write_text("x")
    shapes_picture((96, 96), 54).save(control / "wide.png")  # aspect mismatch
    shapes_picture((160, 96), 54).save(root / "wide.png")
    (root / "wide.txt").write_text("x")
    shapes_picture((96, 96), 55).save(control / "nocap.png")  # no caption
    shapes_picture((96, 96), 56).save(root / "nocap.png")
    for name in ("copy", "copy2"):  # the same pair twice
        Image.open(control / "pair000.png").save(control / f"{name}.png")
        Image.open(root / "pair000.png").save(root / f"{name}.png")
        (root / f"{name}.txt").write_text("invert the colours")
    return root


def test_a_broken_dataset_is_reported_with_counts_and_the_files_at_fault(tmp_path: Path) -> None:
    report = check_dataset(broken_dataset(tmp_path / "ds"), min_side=64)
    by_code = {p.code: p for p in report.problems}
    assert set(by_code) == {"missing_partner", "unreadable", "too_small", "aspect_mismatch", "missing_caption",
                            "duplicate"}
    assert sorted(f.split(" ")[0] for f in by_code["missing_partner"].files) == ["control/lonely.png",
                                                                               "orphan.png"]
    assert [f.split(" ")[0] for f in by_code["unreadable"].files] == ["broken"]
    assert by_code["too_small"].files == ["tiny (tiny.png 40x40, tiny.png 40x40)"]
    assert by_code["aspect_mismatch"].files == ["wide (source 96x96, target 160x96)"]
    assert by_code["missing_caption"].files == ["nocap"]
    assert len(by_code["duplicate"].files) == 2  # copy and copy2 repeat pair000 (the first one seen is kept)
    assert not report.ok and report.errors == 6 and report.warnings == 2
    # the duplicates are still trainable pairs; everything with an error is left out
    assert sorted(s.pair.name for s in report.usable) == ["copy", "copy2", "pair000", "pair001"]
    text = report.summary()
    assert "error unreadable (1)" in text and "Fix:" in text and "orphan.png" in text


def test_unknown_layouts_are_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="control folder"):
        check_dataset(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        check_dataset(tmp_path / "nope")
    (tmp_path / "m.csv").write_text("before,after\na.png,b.png\n")
    with pytest.raises(DatasetError, match="no column"):
        check_dataset(tmp_path / "m.csv")


@pytest.mark.parametrize(("size", "resolution", "bucket"), [
    ((1000, 1000), 512, (512, 512)),
    ((1920, 1080), 1024, (1392, 752)),
    ((1080, 1920), 1024, (752, 1392)),
    ((300, 200), 128, (160, 96)),
])
def test_pairs_go_to_the_preferred_size_nearest_their_shape(size: tuple[int, int], resolution: int,
                                                           bucket: tuple[int, int]) -> None:
    assert bucket_for(size, resolution) == bucket
    img = shapes_picture(size, 1)
    fitted = fit_to_bucket(img, bucket)
    assert fitted.size == bucket
