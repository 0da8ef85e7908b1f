"""The memory planner as pure functions: every local model on 8-80 GB cards, and the error when nothing fits."""

from __future__ import annotations

import pytest

from kontext_studio.core.planner import (
    CARD_SIZES_GIB,
    FOOTPRINTS,
    GpuGeneration,
    Machine,
    Offload,
    PlanDoesNotFit,
    Precision,
    UnknownModel,
    Workload,
    activation_gib,
    all_plans,
    footprint,
    plan_for,
    plan_table,
)

QUALITY_ORDER = list(Precision)


@pytest.mark.parametrize("model_id", list(FOOTPRINTS))
@pytest.mark.parametrize("card", CARD_SIZES_GIB)
def test_every_model_gets_a_plan_that_fits_every_card(model_id: str, card: int) -> None:
    machine = Machine.card(card, ram_gib=128)
    plan = plan_for(footprint(model_id), machine)
    assert plan.vram_gib <= machine.vram_gib
    assert plan.ram_gib <= machine.ram_gib
    assert plan.explanation.startswith(FOOTPRINTS[model_id].title)
    assert f"{plan.vram_gib:.1f} GiB" in plan.explanation


@pytest.mark.parametrize("model_id", list(FOOTPRINTS))
def test_more_memory_never_gives_a_worse_plan(model_id: str) -> None:
    plans = [plan_for(footprint(model_id), Machine.card(c, ram_gib=128)) for c in CARD_SIZES_GIB]
    scores = [p.score for p in plans]
    assert scores == sorted(scores, reverse=True)


def test_kontext_dev_runs_resident_in_bf16_on_48_and_80_gb() -> None:
    for card in (48, 80):
        plan = plan_for(footprint("dev"), Machine.card(card))
        assert (plan.precision, plan.offload) == (Precision.BF16, Offload.GPU)
        assert plan.quality_loss == 0


def test_kontext_dev_on_24_gb_keeps_the_transformer_resident_in_8_bits() -> None:
    ada = plan_for(footprint("dev"), Machine.card(24, generation=GpuGeneration.ADA))
    assert (ada.precision, ada.offload) == (Precision.FP8, Offload.MODEL)
    ampere = plan_for(footprint("dev"), Machine.card(24, generation=GpuGeneration.AMPERE))
    assert ampere.precision is Precision.Q8_0  # no fp8 tensor cores: GGUF Q8_0 instead
    assert "near-lossless" in ampere.explanation


def test_klein_4b_fits_a_24_gb_card_whole() -> None:
    plan = plan_for(footprint("klein-4b"), Machine.card(24))
    assert (plan.precision, plan.offload) == (Precision.BF16, Offload.GPU)


def test_small_cards_stream_or_quantize_and_say_so() -> None:
    plan = plan_for(footprint("dev"), Machine.card(8))
    assert plan.offload in (Offload.GROUP, Offload.SEQUENTIAL, Offload.MODEL)
    assert plan.precision is not Precision.BF16 or plan.offload is not Offload.GPU
    assert "system memory" in plan.explanation


def test_attention_backend_follows_the_gpu_generation() -> None:
    model = footprint("dev")
    assert plan_for(model, Machine.card(80, generation=GpuGeneration.HOPPER)).attention == "_flash_3"
    assert plan_for(model, Machine.card(80, generation=GpuGeneration.BLACKWELL)).attention == "_native_cudnn"
    assert plan_for(model, Machine.card(24, generation=GpuGeneration.AMPERE)).attention == "native"


def test_nf4_is_never_planned_without_cuda() -> None:
    plans = all_plans(footprint("flux2-dev"), Machine(64, 128, GpuGeneration.APPLE))
    assert plans and all(p.precision is not Precision.NF4 for p in plans)


def test_fp8_is_only_planned_where_the_gpu_has_fp8() -> None:
    ampere = all_plans(footprint("dev"), Machine.card(12, generation=GpuGeneration.AMPERE))
    assert all(p.precision is not Precision.FP8 for p in ampere)
    hopper = all_plans(footprint("dev"), Machine.card(12, generation=GpuGeneration.HOPPER))
    assert any(p.precision is Precision.FP8 for p in hopper)


def test_more_references_and_pixels_need_more_memory() -> None:
    model = footprint("qwen-image-edit")
    assert activation_gib(model, Workload(1024, 3)) > activation_gib(model, Workload(1024, 1))
    assert activation_gib(model, Workload(2048, 1)) > activation_gib(model, Workload(1024, 1))


def test_nothing_fits_names_the_smallest_plan_that_would() -> None:
    with pytest.raises(PlanDoesNotFit) as info:
        plan_for(footprint("flux2-dev"), Machine.card(8, ram_gib=32))
    exc = info.value
    assert exc.smallest is not None
    message = str(exc)
    assert "does not fit 7.2 GiB" in message
    assert f"needs about {exc.smallest.vram_gib:.1f} GiB free" in message
    assert exc.smallest.vram_gib > 7.2
    assert "system memory" in message


def test_cpu_only_machines_get_the_cpu_plan_or_a_clear_error() -> None:
    plan = plan_for(footprint("klein-4b"), Machine(None, 128, GpuGeneration.CPU))
    assert plan.offload is Offload.NONE and "use a GPU" in plan.explanation
    with pytest.raises(PlanDoesNotFit, match="system memory on the CPU"):
        plan_for(footprint("flux2-dev"), Machine(None, 16, GpuGeneration.CPU))


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(UnknownModel, match="dev"):
        footprint("sdxl")


def test_generation_from_compute_capability() -> None:
    assert GpuGeneration.from_capability(9, 0) is GpuGeneration.HOPPER
    assert GpuGeneration.from_capability(8, 9) is GpuGeneration.ADA
    assert GpuGeneration.from_capability(8, 6) is GpuGeneration.AMPERE
    assert GpuGeneration.from_capability(12, 0) is GpuGeneration.BLACKWELL


def test_plan_table_has_a_row_per_model_and_a_column_per_card() -> None:
    table = plan_table()
    lines = table.splitlines()
    assert len(lines) == 2 + len(FOOTPRINTS)
    assert all(line.count("|") == len(CARD_SIZES_GIB) + 2 for line in lines)
