from fractions import Fraction

import pytest

from kontext_studio.core.errors import InvalidRequest
from kontext_studio.core.resolution import (
    ASPECT_PRESETS,
    PREFERRED_1MP,
    nearest_preferred,
    parse_aspect_ratio,
    plan_output,
    preferred_sizes,
)
from kontext_studio.core.types import GeometryMode


def test_real_model_sizes_are_the_published_list() -> None:
    sizes = preferred_sizes(1024)
    assert sizes == PREFERRED_1MP
    assert all(w % 16 == 0 and h % 16 == 0 for w, h in sizes)
    assert (1024, 1024) in sizes


def test_scaled_sizes_for_a_small_model_stay_multiples_of_16() -> None:
    sizes = preferred_sizes(128)
    assert (128, 128) in sizes
    assert all(w % 16 == 0 and h % 16 == 0 and w > 0 and h > 0 for w, h in sizes)


@pytest.mark.parametrize("preset", ASPECT_PRESETS)
def test_every_preset_gives_exactly_that_ratio(preset: str) -> None:
    a, b = (int(x) for x in preset.split(":"))
    plan = plan_output((1000, 700), preset, GeometryMode.LOCK, 1024)
    w, h = plan.output_size
    assert Fraction(w, h) == Fraction(a, b)
    # about one megapixel, never more than the model produced
    mw, mh = plan.model_size
    assert 0.85 * mw * mh <= w * h <= mw * mh


def test_16_9_snaps_to_the_preferred_size_and_is_restored() -> None:
    plan = plan_output((640, 480), "16:9", GeometryMode.LOCK, 1024)
    assert plan.model_size == (1392, 752)
    assert plan.output_size == (1360, 765)
    assert plan.warnings == ("aspect ratio 16:9 snapped to 1392x752 for the model; output restored to 1360x765",)


@pytest.mark.parametrize("size", [(1000, 700), (333, 517), (1024, 1024), (4000, 3000), (17, 900)])
def test_match_input_keeps_the_exact_input_size(size: tuple[int, int]) -> None:
    plan = plan_output(size, "match_input_image", GeometryMode.LOCK, 1024)
    assert plan.output_size == size
    assert plan.model_size in PREFERRED_1MP
    if plan.model_size != size:
        assert "output restored to" in plan.warnings[0]


def test_preferred_input_is_not_resized() -> None:
    plan = plan_output((1184, 880), "match_input_image", GeometryMode.LOCK, 1024)
    assert plan.model_size == plan.output_size == (1184, 880)
    assert plan.warnings == ()


def test_native_geometry_returns_the_model_size() -> None:
    plan = plan_output((1000, 700), "match_input_image", GeometryMode.NATIVE, 1024)
    assert plan.output_size == plan.model_size == nearest_preferred(1000 / 700)


@pytest.mark.parametrize("bad", ["3:1", "1:3", "banana", "16x0", "-4:3", "4:3:2"])
def test_bad_aspect_ratios_are_refused_with_the_accepted_forms(bad: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_aspect_ratio(bad)
    assert info.value.field == "aspect_ratio"
    assert repr(bad) in str(info.value)


def test_aspect_ratio_spellings() -> None:
    assert parse_aspect_ratio("match_input_image") is None
    assert parse_aspect_ratio("16:9") == Fraction(16, 9)
    assert parse_aspect_ratio("21:9") == Fraction(21, 9)
    assert parse_aspect_ratio("9:21") == Fraction(9, 21)
