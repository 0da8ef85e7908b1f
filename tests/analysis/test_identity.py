"""Identity score on real photographs (offline): skimage's astronaut (person A), matplotlib's Grace
Hopper portrait (person B), and skimage's face-free coffee/rocket pictures for the object fallback."""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image, ImageEnhance
from skimage import data as skdata

from kontext_studio.analysis.consistency import compare_features, consistency_score, rgb_array
from kontext_studio.analysis.identity import (
    DLIB_THRESHOLD,
    FaceModelError,
    OnnxFaceEmbedder,
    clear_cache,
    compare_identity,
    detect_faces,
    dlib_models_dir,
    similarity_from_distance,
)
from kontext_studio.core.errors import InvalidRequest


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(skdata.astronaut())


@pytest.fixture(scope="module")
def hopper() -> Image.Image:
    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    with Image.open(path) as image:
        return image.convert("RGB")


@pytest.fixture(scope="module")
def coffee() -> Image.Image:
    return Image.fromarray(skdata.coffee())


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _noise(image: Image.Image, sigma: float = 12.0) -> Image.Image:
    pixels = np.asarray(image).astype(np.float64)
    noisy = pixels + np.random.default_rng(0).normal(0.0, sigma, pixels.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _face_crop(image: Image.Image) -> Image.Image:
    left, top, right, bottom = detect_faces(image)[0].box
    cx, cy, half = (left + right) / 2, (top + bottom) / 2, 1.5 * (right - left)
    return image.crop((int(cx - half), int(cy - half), int(cx + half), int(cy + half)))


TRANSFORMS = {
    "resize 0.5x": lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS),
    "resize 1.5x": lambda im: im.resize((im.width * 3 // 2, im.height * 3 // 2), Image.Resampling.LANCZOS),
    "jpeg q30": lambda im: _jpeg(im, 30),
    "brightness +20%": lambda im: ImageEnhance.Brightness(im).enhance(1.2),
    "brightness -20%": lambda im: ImageEnhance.Brightness(im).enhance(0.8),
    "rotate 5°": lambda im: im.rotate(5, resample=Image.Resampling.BICUBIC),
    "horizontal flip": lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    "crop around the face": _face_crop,
    "gaussian noise σ=12": _noise,
}


def _side_by_side(*images: Image.Image) -> Image.Image:
    canvas = Image.new("RGB", (sum(im.width for im in images), max(im.height for im in images)), (128, 128, 128))
    x = 0
    for im in images:
        canvas.paste(im, (x, 0))
        x += im.width
    return canvas


# ------------------------------------------------------------------------------------------ face models


def test_models_are_found_without_importing_the_package() -> None:
    import sys

    folder = dlib_models_dir()
    assert (folder / "shape_predictor_5_face_landmarks.dat").is_file()
    # Importing face_recognition_models would need pkg_resources; finding its files must not import it.
    assert "face_recognition_models" not in sys.modules


def test_similarity_mapping_is_anchored_and_monotone() -> None:
    assert similarity_from_distance(0.0, DLIB_THRESHOLD) == 1.0
    assert similarity_from_distance(DLIB_THRESHOLD, DLIB_THRESHOLD) == pytest.approx(0.5)
    values = [similarity_from_distance(d, DLIB_THRESHOLD) for d in np.linspace(0, 2, 41)]
    assert all(a > b for a, b in itertools.pairwise(values))
    assert 0.0 < values[-1] < 0.05
    with pytest.raises(ValueError):
        similarity_from_distance(0.3, 0.0)


# --------------------------------------------------------------------------------------- same / different


@pytest.mark.parametrize("transform", list(TRANSFORMS))
@pytest.mark.parametrize("person", ["astronaut", "hopper"])
def test_same_person_survives_ordinary_edits(person: str, transform: str, request: pytest.FixtureRequest) -> None:
    reference: Image.Image = request.getfixturevalue(person)
    report = compare_identity(reference, TRANSFORMS[transform](reference))
    print(f"{person:9s} {transform:22s} distance={report.distance} similarity={report.similarity}")
    assert report.measured and report.method == "dlib-resnet"
    assert report.same_person is True, report
    assert report.distance is not None and report.distance < 0.35  # measured ≤ 0.23: a wide margin to 0.6
    assert report.similarity is not None and report.similarity > 0.9
    assert report.reason is None and report.lost_faces == 0


def test_different_people_are_told_apart(astronaut: Image.Image, hopper: Image.Image) -> None:
    report = compare_identity(astronaut, hopper)
    print(f"astronaut vs hopper: distance={report.distance} similarity={report.similarity}")
    assert report.measured and report.same_person is False
    assert report.distance is not None and report.distance > DLIB_THRESHOLD  # measured 0.694
    assert report.similarity is not None and report.similarity < 0.5
    assert report.reason is not None and "different person" in report.reason
    # Symmetric: the same two faces, either way round.
    assert compare_identity(hopper, astronaut).distance == pytest.approx(report.distance, abs=1e-6)


def test_report_is_json_ready(astronaut: Image.Image, hopper: Image.Image) -> None:
    data = json.loads(json.dumps(compare_identity(astronaut, hopper).as_dict()))
    assert data["faces"][0]["reference_box"] == list(detect_faces(astronaut)[0].box)
    assert data["metric"] == "euclidean" and data["threshold"] == DLIB_THRESHOLD


# -------------------------------------------------------------------------------------------- several faces


def test_several_faces_each_matched_to_their_own(astronaut: Image.Image, hopper: Image.Image) -> None:
    reference = _side_by_side(astronaut, hopper)
    output = _side_by_side(hopper, astronaut)  # the same two people, swapped places
    report = compare_identity(reference, output)
    assert report.reference_faces == 2 and report.output_faces == 2
    assert report.same_person is True and report.lost_faces == 0
    left_ref, right_ref = report.faces
    # Astronaut (reference left) is found on the output's right half, Hopper the other way round.
    assert left_ref.output_box is not None and left_ref.output_box[0] >= hopper.width
    assert right_ref.output_box is not None and right_ref.output_box[0] < hopper.width
    assert report.distance == max(f.distance or 0.0 for f in report.faces)


def test_a_face_missing_from_the_output_is_lost(
    astronaut: Image.Image, hopper: Image.Image, coffee: Image.Image
) -> None:
    reference = _side_by_side(astronaut, hopper)
    report = compare_identity(reference, _side_by_side(astronaut, coffee))
    assert report.measured and report.lost_faces == 1
    assert report.same_person is False and report.similarity == 0.0
    assert report.reason is not None and "lost" in report.reason
    kept, lost = report.faces
    assert kept.same_person and kept.output_box is not None
    assert lost.output_box is None and lost.distance is None and not lost.same_person


def test_one_person_replaced_fails_the_whole_verdict(astronaut: Image.Image, hopper: Image.Image) -> None:
    # The worst matched pair decides: Hopper's place now holds a second astronaut.
    report = compare_identity(_side_by_side(astronaut, hopper), _side_by_side(astronaut, astronaut))
    assert report.lost_faces == 0 and report.same_person is False
    assert [f.same_person for f in report.faces] == [True, False]


def test_no_face_left_in_the_output(astronaut: Image.Image, coffee: Image.Image) -> None:
    report = compare_identity(astronaut, coffee)
    assert report.measured and report.same_person is False and report.lost_faces == 1
    assert report.reason is not None and "lost" in report.reason


# ------------------------------------------------------------------------------------------ input handling


@pytest.mark.parametrize("mode", ["L", "I;16", "CMYK", "RGBA", "P", "F"])
def test_any_pil_mode_is_accepted(mode: str, astronaut: Image.Image) -> None:
    if mode == "I;16":
        wide = (np.asarray(astronaut.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
        converted = Image.fromarray(wide)
        assert converted.mode == "I;16"
    elif mode == "F":
        converted = Image.fromarray(np.asarray(astronaut.convert("L"), dtype=np.float32) / 255.0)
        assert converted.mode == "F"
    else:
        converted = astronaut.convert(mode)
    rgb = rgb_array(converted)
    assert rgb.dtype == np.uint8 and rgb.shape == (512, 512, 3)
    assert 60 < rgb.mean() < 200  # scaled, not clipped to white or black
    report = compare_identity(converted, astronaut)
    assert report.same_person is True, report


def test_tiny_images_are_not_measured(astronaut: Image.Image) -> None:
    report = compare_identity(astronaut.resize((24, 24)), astronaut)
    assert report.measured is False and report.same_person is None
    assert report.reason is not None and "too small" in report.reason and "reference" in report.reason
    report = compare_identity(astronaut, astronaut.resize((31, 100)))
    assert report.measured is False and report.reason is not None and "output" in report.reason
    assert detect_faces(Image.new("RGB", (10, 10))) == []


def test_non_images_are_rejected() -> None:
    with pytest.raises(TypeError):
        compare_identity(np.zeros((64, 64, 3), dtype=np.uint8), Image.new("RGB", (64, 64)))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- objects: feature fallback


OBJECT_EDITS = {
    "scale 0.6x": lambda im: im.resize((int(im.width * 0.6), int(im.height * 0.6)), Image.Resampling.LANCZOS),
    "rotate 10°": lambda im: im.rotate(10, resample=Image.Resampling.BICUBIC, expand=True),
    "crop 80%": lambda im: im.crop((im.width // 10, im.height // 10, im.width * 9 // 10, im.height * 9 // 10)),
    "brightness +20%": lambda im: ImageEnhance.Brightness(im).enhance(1.2),
    "all at once": lambda im: ImageEnhance.Brightness(
        im.rotate(8, resample=Image.Resampling.BICUBIC, expand=True).resize(
            (int(im.width * 0.8), int(im.height * 0.75))
        )
    ).enhance(0.8),
}


@pytest.mark.parametrize("edit", list(OBJECT_EDITS))
def test_same_object_scores_high(edit: str, coffee: Image.Image) -> None:
    report = compare_features(coffee, OBJECT_EDITS[edit](coffee))
    print(f"coffee {edit:16s} score={report.score} inliers={report.inliers} ratio={report.inlier_ratio}")
    assert report.measured and report.consistent is True
    assert report.score > 0.9


@pytest.mark.parametrize("other", ["rocket", "chelsea", "camera"])
def test_unrelated_objects_score_low(other: str, coffee: Image.Image) -> None:
    report = compare_features(coffee, Image.fromarray(getattr(skdata, other)()))
    print(f"coffee vs {other}: score={report.score} inliers={report.inliers} matches={report.matches}")
    assert report.measured and report.consistent is False
    assert report.score < 0.15


def test_consistency_score_formula() -> None:
    assert consistency_score(8, 1.0) == 0.0  # chance inliers only
    assert consistency_score(100, 1.0) > 0.99
    assert consistency_score(100, 0.3) == pytest.approx(consistency_score(100, 1.0) * 0.5)
    assert consistency_score(30, 0.9) < consistency_score(60, 0.9)


def test_no_face_in_reference_falls_back_to_features(coffee: Image.Image) -> None:
    same = compare_identity(coffee, OBJECT_EDITS["all at once"](coffee))
    assert same.measured is False and same.method == "features"
    assert same.reason == "no face in the reference, so the object's details are compared instead"
    assert same.consistency is not None and same.consistency.consistent is True
    assert same.similarity == same.consistency.score and same.similarity > 0.9
    assert same.same_person is None and same.distance is None
    different = compare_identity(coffee, Image.fromarray(skdata.rocket()))
    assert different.method == "features" and different.similarity is not None and different.similarity < 0.15
    assert json.loads(json.dumps(different.as_dict()))["consistency"]["method"] == "sift-ransac"


def test_blank_reference_is_not_measured_by_features_either() -> None:
    report = compare_identity(Image.new("RGB", (128, 128), (200, 10, 10)), Image.new("RGB", (128, 128)))
    assert report.measured is False and report.method == "features"
    assert report.consistency is not None and report.consistency.measured is False
    assert report.reason is not None and "too plain to compare" in report.reason


# ----------------------------------------------------------------------------------------- ONNX scorer


def _onnx_model(
    path: Path, *, in_shape: Sequence[int | str], out_dim: int = 128, reshape: list[int] | None = None
) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    features = int(np.prod([d for d in in_shape[1:] if isinstance(d, int)]))
    weights = (np.random.default_rng(0).standard_normal((features, out_dim)) / np.sqrt(features)).astype(np.float32)
    nodes = [
        helper.make_node("Flatten", ["image"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "weights"], ["embedding" if reshape is None else "raw"]),
    ]
    initializers = [numpy_helper.from_array(weights, "weights")]
    out_shape: list[int | str] = [in_shape[0], out_dim]
    if reshape is not None:
        nodes.append(helper.make_node("Reshape", ["raw", "shape"], ["embedding"]))
        initializers.append(numpy_helper.from_array(np.array(reshape, dtype=np.int64), "shape"))
        out_shape = list(reshape)
    graph = helper.make_graph(
        nodes,
        "toy-face-embedder",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, out_shape)],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by any onnxruntime from 1.14 on
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_onnx_scorer_loads_and_scores(tmp_path: Path, astronaut: Image.Image, hopper: Image.Image) -> None:
    scorer = OnnxFaceEmbedder(_onnx_model(tmp_path / "toy.onnx", in_shape=["N", 3, 112, 112]))
    assert scorer.input_size == 112 and scorer.dimension == 128
    assert scorer.threshold == pytest.approx(0.65) and scorer.method == "onnx:toy.onnx"
    same = compare_identity(astronaut, astronaut, scorer=scorer)
    assert same.method == "onnx:toy.onnx" and same.metric == "cosine-distance"
    assert same.distance == pytest.approx(0.0, abs=1e-5)
    assert same.similarity == pytest.approx(1.0) and same.same_person is True
    # A random projection knows nothing about faces; it must still run and give a bounded answer.
    other = compare_identity(astronaut, hopper, scorer=scorer)
    assert other.distance is not None and 0.0 <= other.distance <= 2.0
    assert other.similarity is not None and 0.0 <= other.similarity <= 1.0


def test_onnx_face_crop_is_aligned(tmp_path: Path, astronaut: Image.Image) -> None:
    import dlib

    from kontext_studio.analysis.identity import _dlib_models

    scorer = OnnxFaceEmbedder(_onnx_model(tmp_path / "nhwc.onnx", in_shape=[1, 112, 112, 3]))
    rgb = rgb_array(astronaut)
    rect = dlib.rectangle(*detect_faces(astronaut)[0].box)
    crop = scorer.align(rgb, _dlib_models().predictor(rgb, rect))
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    assert crop.std() > 20  # a face, not the black border


def test_onnx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FaceModelError, match="does not exist"):
        OnnxFaceEmbedder(tmp_path / "nope.onnx")


def test_onnx_not_an_onnx_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf \x00\x01\x02" * 10)
    with pytest.raises(FaceModelError, match="not a loadable ONNX model") as info:
        OnnxFaceEmbedder(junk)
    assert isinstance(info.value, InvalidRequest) and isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("in_shape", "reshape", "message"),
    [
        ([1, 1, 64, 64], None, "no 3-channel axis"),
        ([1, 3, 112, 96], None, "square"),
        ([4, 3, 112, 112], None, "fixed batch"),
        ([1, 3, 112, 112], [1, 128, 1, 1], "returns shape"),
    ],
)
def test_onnx_shapes_that_do_not_fit(
    tmp_path: Path, in_shape: list[int], reshape: list[int] | None, message: str
) -> None:
    path = _onnx_model(tmp_path / "bad.onnx", in_shape=in_shape, reshape=reshape)
    with pytest.raises(FaceModelError, match=message):
        OnnxFaceEmbedder(path)


# ---------------------------------------------------------------------------------------------- timing


def test_timing_per_512px_pair(astronaut: Image.Image, hopper: Image.Image) -> None:
    hopper_512 = hopper.resize((512, 512))
    compare_identity(astronaut, hopper_512)  # models are loaded by now; this warms caches
    timings = []
    for _ in range(2):
        clear_cache()  # a cold pair: both pictures detected and described
        timings.append(compare_identity(astronaut, hopper_512).seconds)
    cached = compare_identity(astronaut, hopper.resize((512, 512), Image.Resampling.BILINEAR)).seconds
    print(f"identity on a 512 px pair: {min(timings):.3f} s cold (best of 2), {cached:.3f} s with a cached reference")
    # About 0.3 s on an idle 2-core machine (two HOG passes + two ResNet descriptors); loose for busy CI.
    assert min(timings) < 2.5
    assert cached < min(timings) * 1.5


def test_concurrent_comparisons_agree(astronaut: Image.Image, hopper: Image.Image) -> None:
    from concurrent.futures import ThreadPoolExecutor

    pairs = [(astronaut, hopper.rotate(3)), (hopper, astronaut.rotate(3))] * 2
    with ThreadPoolExecutor(max_workers=4) as pool:
        distances = [r.distance for r in pool.map(lambda p: compare_identity(*p), pairs)]
    assert distances[0] == distances[2] and distances[1] == distances[3]
    assert all(d is not None and d > DLIB_THRESHOLD for d in distances)


def test_cache_does_not_confuse_scorers(tmp_path: Path, astronaut: Image.Image, hopper: Image.Image) -> None:
    first = OnnxFaceEmbedder(_onnx_model(tmp_path / "a.onnx", in_shape=[1, 3, 112, 112], out_dim=64))
    dlib_report = compare_identity(astronaut, hopper)
    onnx_report = compare_identity(astronaut, hopper, scorer=first)
    assert dlib_report.method == "dlib-resnet" and onnx_report.method == "onnx:a.onnx"
    assert dlib_report.distance != onnx_report.distance
