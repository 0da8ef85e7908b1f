import pytest

from kontext_studio.core.device import GiB, MemoryMode, choose_memory_mode, pick_dtype_name
from kontext_studio.settings import Settings

# FLUX.1 Kontext [dev] in bf16: transformer 23.8 GiB, everything 33.7 GiB, one single block ~0.3 GiB.
TOTAL, TRANSFORMER, BLOCK = int(33.7 * GiB), int(23.8 * GiB), int(0.3 * GiB)


@pytest.mark.parametrize(
    ("free_gib", "mode"),
    [
        (139, MemoryMode.GPU),  # H200
        (79, MemoryMode.GPU),  # H100 80 GB
        (47, MemoryMode.GPU),  # L40S / A6000 48 GB
        (39, MemoryMode.MODEL_OFFLOAD),
        (31, MemoryMode.MODEL_OFFLOAD),  # 5090 32 GB
        (23, MemoryMode.GROUP_OFFLOAD),  # 4090 24 GB
        (11, MemoryMode.GROUP_OFFLOAD),  # 3060 12 GB
        (6.5, MemoryMode.SEQUENTIAL_OFFLOAD),
    ],
)
def test_memory_mode_follows_free_vram(free_gib: float, mode: MemoryMode) -> None:
    got, reason = choose_memory_mode(int(free_gib * GiB), TOTAL, TRANSFORMER, BLOCK)
    assert got is mode
    assert "GiB" in reason


def test_dtype_defaults() -> None:
    assert pick_dtype_name("cpu") == "float32"
    assert pick_dtype_name("cuda") == "bfloat16"
    assert pick_dtype_name("cuda", "float16") == "float16"


def test_settings_come_from_the_environment_only_through_settings() -> None:
    s = Settings.from_env({"KONTEXT_MODEL": "/models/kontext", "HF_TOKEN": "hf_x", "HF_HUB_OFFLINE": "1",
                           "KONTEXT_MEMORY_MODE": "model_offload"})
    assert s.model == "/models/kontext" and s.hf_token == "hf_x" and s.memory_mode == "model_offload"
    assert s.allow_download is False
    assert Settings.from_env({}).allow_download is True
