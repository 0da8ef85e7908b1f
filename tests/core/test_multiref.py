from kontext_studio.core.multiref import Placement, placements, stitch
from kontext_studio.core.types import Strategy
from tests.conftest import noise_image


def test_offset_tiles_by_each_references_own_width() -> None:
    spots = placements([(8, 8), (5, 11), (7, 6)], Strategy.OFFSET)
    assert spots == [Placement(1, 0, 0), Placement(1, 0, 8), Placement(1, 0, 13)]


def test_index_gives_each_reference_its_own_index() -> None:
    assert placements([(8, 8), (5, 11)], Strategy.INDEX) == [Placement(1, 0, 0), Placement(2, 0, 0)]


def test_stitch_two_side_by_side_keeps_aspect_and_never_crops() -> None:
    a, b = noise_image(150, 100), noise_image(50, 100, seed=1)
    canvas = stitch([a, b], row_height=100)
    assert canvas.size == (200, 100)
    # both pictures appear unchanged, side by side
    assert canvas.crop((0, 0, 150, 100)).tobytes() == a.tobytes()
    assert canvas.crop((150, 0, 200, 100)).tobytes() == b.tobytes()


def test_stitch_wraps_into_rows_beyond_the_models_widest_ratio() -> None:
    canvas = stitch([noise_image(200, 100), noise_image(50, 100, seed=1)], row_height=100)
    assert canvas.size == (200, 200)  # 250x100 would be 2.5:1, wider than 7:3


def test_stitch_two_squares_side_by_side_three_in_rows() -> None:
    assert stitch([noise_image(64, 64, seed=i) for i in range(2)], row_height=64).size == (128, 64)
    assert stitch([noise_image(64, 64, seed=i) for i in range(3)], row_height=64).size == (128, 128)


def test_stitch_four_squares_makes_a_square_grid() -> None:
    canvas = stitch([noise_image(64, 64, seed=i) for i in range(4)], row_height=64)
    assert canvas.size == (128, 128)


def test_single_image_is_returned_as_is() -> None:
    a = noise_image(30, 40)
    assert stitch([a]) is a
