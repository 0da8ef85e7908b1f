"""The catalogue as data: names, the Kontext tiers unchanged, licences, limits, prices, hosted FLUX.2 on BFL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kontext_studio.core.backends.bfl_api import BflApiBackend, BflConfig
from kontext_studio.core.catalogue import CATALOGUE, ENTRIES, Family, Task, get_model, parse_prices
from kontext_studio.core.engine import Editor
from kontext_studio.core.errors import InvalidRequest, UnsupportedTier
from kontext_studio.core.registry import TIERS
from kontext_studio.core.types import EditRequest, Reference
from kontext_studio.testing.fake_bfl import FakeBflServer
from tests.conftest import noise_image


def test_every_name_form_finds_the_same_entry() -> None:
    for name in ("black-forest-labs/flux-2-klein-4b", "flux-2-klein-4b", "klein-4b", " Klein-4B "):
        assert get_model(name).pipeline == "Flux2KleinPipeline"
    assert get_model("flux-kontext-dev") is get_model("dev")
    assert len({e.key for e in ENTRIES}) == len(ENTRIES) and all(len(e.key) <= 16 for e in ENTRIES)


def test_an_unknown_name_is_refused_with_the_list() -> None:
    with pytest.raises(UnsupportedTier, match=r"model must be one of black-forest-labs/flux-kontext-dev,.*"
                                              "qwen/qwen-image-edit-2511.*got 'flux-3'") as caught:
        get_model("flux-3")
    assert caught.value.field == "model"
    with pytest.raises(InvalidRequest, match="tier must be one of"):
        EditRequest([Reference("a.png")], "x", tier="ultra").validate()


def test_the_kontext_tiers_are_entries_with_their_prices_and_limits() -> None:
    for key, tier in TIERS.items():
        entry = get_model(key)
        assert (entry.price_credits, entry.max_references, entry.steps, entry.guidance, entry.backend) == (
            tier.price_credits, tier.max_references, tier.steps, tier.guidance, tier.backend)
        assert entry.family is Family.KONTEXT and entry.tier is tier
    assert {k: get_model(k).price_credits for k in TIERS} == {"fast": 4, "dev": 5, "pro": 8, "max": 15}


def test_licences_say_plainly_which_allow_commercial_use() -> None:
    commercial = {e.key for e in ENTRIES if e.local and e.licence.commercial}
    assert commercial == {"klein-4b", "qwen-edit"}
    assert get_model("klein-9b").licence.commercial is False and get_model("flux2-dev").licence.commercial is False


def test_local_entries_name_their_pipeline_and_hub_repo() -> None:
    local = {e.key: (e.pipeline, e.weights.hub) for e in CATALOGUE.local()}
    assert local == {
        "dev": ("FluxKontextPipeline", "black-forest-labs/FLUX.1-Kontext-dev"),
        "fast": ("FluxKontextPipeline", "black-forest-labs/FLUX.1-Kontext-dev"),
        "klein-4b": ("Flux2KleinPipeline", "black-forest-labs/FLUX.2-klein-4B"),
        "klein-9b": ("Flux2KleinPipeline", "black-forest-labs/FLUX.2-klein-9B"),
        "flux2-dev": ("Flux2Pipeline", "black-forest-labs/FLUX.2-dev"),
        "qwen-edit": ("QwenImageEditPlusPipeline", "Qwen/Qwen-Image-Edit-2511"),
    }
    import diffusers

    assert all(hasattr(diffusers, pipe) for pipe, _ in local.values())
    assert Task.GENERATE not in get_model("qwen-edit").tasks and get_model("dev").can_generate


def test_prices_are_configuration() -> None:
    priced = CATALOGUE.with_prices(parse_prices("klein-4b=1, black-forest-labs/flux-2-max=20"))
    assert priced.resolve("klein-4b").price_credits == 1 and priced.resolve("flux2-max").price_credits == 20
    assert priced.resolve("dev").price_credits == 5 and get_model("klein-4b").price_credits == 2
    with pytest.raises(InvalidRequest, match="prices: no model named nope"):
        CATALOGUE.with_prices({"nope": 3})
    with pytest.raises(InvalidRequest, match="expected name=credits"):
        parse_prices("klein-4b:3")


@pytest.fixture()
def fake() -> Iterator[FakeBflServer]:
    with FakeBflServer("k") as server:
        yield server


def _hosted(fake: FakeBflServer) -> Editor:
    return Editor({"bfl_api": BflApiBackend(BflConfig(api_key="k", base_url=fake.url, poll_initial=0.01,
                                                      poll_max=0.05), sleep=lambda _s: None)})


def test_hosted_flux2_sends_every_reference_and_an_exact_size(fake: FakeBflServer) -> None:
    refs = [Reference(noise_image(300 + 10 * i, 200, seed=i)) for i in range(6)]
    out = _hosted(fake).edit(EditRequest(refs, "put them together", model="black-forest-labs/flux-2-flex",
                                         width=640, height=480, seed=2, steps=20, guidance=3.0))
    body = fake.submissions[-1]
    assert [k for k in body if k.startswith("input_image")] == ["input_image"] + [f"input_image_{i}" for i in
                                                                                  range(2, 7)]
    assert (body["width"], body["height"], body["steps"], body["guidance"]) == (640, 480, 20, 3.0)
    assert "aspect_ratio" not in body and out.image.size == (640, 480)
    assert out.recipe["model_name"] == "black-forest-labs/flux-2-flex" and out.recipe["tier"] == "flux2-flex"


def test_hosted_flux2_generates_from_text_alone(fake: FakeBflServer) -> None:
    out = _hosted(fake).edit(EditRequest([], "a red fox in the snow", model="flux-2-pro", aspect_ratio="16:9", seed=1))
    body = fake.submissions[-1]
    assert "input_image" not in body and body["width"] / body["height"] == pytest.approx(16 / 9, rel=0.02)
    assert out.image.size[0] / out.image.size[1] == pytest.approx(16 / 9, rel=0.02)


def test_hosted_flux2_refuses_a_ninth_reference_before_sending(fake: FakeBflServer) -> None:
    with pytest.raises(InvalidRequest, match="takes at most 8 reference images, got 9"):
        _hosted(fake).edit(EditRequest([Reference(noise_image(64, 64))] * 9, "x", model="flux2-max"))
    assert fake.submit_attempts == []
