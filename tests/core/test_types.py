import pytest

from kontext_studio.core.errors import InvalidRequest, UnsupportedTier
from kontext_studio.core.registry import TIERS, get_tier
from kontext_studio.core.types import EditRequest, LoraSpec, Reference, Role, Strategy


def req(**kw: object) -> EditRequest:
    base: dict[str, object] = {"references": [Reference("a.png")], "instruction": "make it snowy"}
    base.update(kw)
    return EditRequest(**base)  # type: ignore[arg-type]


def test_defaults() -> None:
    r = req()
    r.validate()
    # No strategy means the model's own default: stitch for Kontext.
    assert r.tier == "dev" and r.strategy is None and r.entry().default_strategy == Strategy.STITCH
    assert r.aspect_ratio == "match_input_image"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"references": [], "tier": "pro"}, "references"),  # pro only edits; dev also generates from text
        ({"references": [Reference("a.png")] * 5}, "references"),
        ({"instruction": "   "}, "instruction"),
        ({"instruction": "x" * 5000}, "instruction"),
        ({"seed": -1}, "seed"),
        ({"steps": 0}, "steps"),
        ({"steps": 1000}, "steps"),
        ({"guidance": 50.0}, "guidance"),
        ({"loras": [LoraSpec("a.safetensors", 9.0)]}, "loras"),
    ],
)
def test_invalid_fields_are_named(changes: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        req(**changes).validate()
    assert info.value.field == field


def test_enum_fields_teach_the_choices() -> None:
    with pytest.raises(InvalidRequest, match="strategy must be one of native, stitch, offset, index; got 'zigzag'"):
        req(strategy="zigzag")
    with pytest.raises(InvalidRequest, match="role must be one of subject, garment"):
        Reference("a.png", role="hat")  # type: ignore[arg-type]
    assert Reference("a.png", role="garment").role is Role.GARMENT  # type: ignore[arg-type]


def test_lora_spec_parsing() -> None:
    assert LoraSpec.parse("style.safetensors:0.8") == LoraSpec("style.safetensors", 0.8)
    assert LoraSpec.parse("style.safetensors") == LoraSpec("style.safetensors", 1.0)
    assert LoraSpec.parse("C:/loras/a.safetensors") == LoraSpec("C:/loras/a.safetensors", 1.0)


def test_tier_registry_prices_and_defaults() -> None:
    assert {t: s.price_credits for t, s in TIERS.items()} == {"fast": 4, "dev": 5, "pro": 8, "max": 15}
    assert get_tier("dev").steps == 28 and get_tier("dev").guidance == 2.5
    fast = get_tier("FAST")
    assert fast.steps == get_tier("dev").steps and fast.acceleration == "fast" and fast.trades
    assert get_tier("max").max_references == 4 and get_tier("pro").max_references == 1
    with pytest.raises(UnsupportedTier, match="tier must be one of fast, dev, pro, max; got 'ultra'"):
        get_tier("ultra")


@pytest.mark.parametrize("model", ["pro", "max", "flux2-pro"])
def test_hosted_models_refuse_acceleration_and_draft_in_words(model: str) -> None:
    ref = [Reference(b"\x89PNG")]
    with pytest.raises(InvalidRequest, match="runs on Black Forest Labs' servers") as exc:
        EditRequest(ref, "as an oil painting", model=model, acceleration="fast").validate()
    assert exc.value.field == "acceleration"
    with pytest.raises(InvalidRequest, match="leave draft off") as exc:
        EditRequest(ref, "as an oil painting", model=model, draft=True).validate()
    assert exc.value.field == "draft"
    EditRequest(ref, "as an oil painting", model="klein-4b", acceleration="fast", draft=True).validate()
