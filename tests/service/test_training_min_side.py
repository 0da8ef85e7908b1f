"""Submitting a training run checks picture sizes against the run's own resolution when no minimum is sent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kontext_studio.service.accounts import SqlAccounts
from kontext_studio.training.dataset import min_side_for
from kontext_studio.training.synthetic import make_pairs
from tests.service.test_api import user_client
from tests.service.test_training_api import CONFIG, app_by_hand, zip_folder  # noqa: F401 (fixture)


def post(client: Any, data: bytes, config: dict[str, Any]) -> Any:
    return client.http.post("/v1/trainings", headers=client.headers,
                            files={"dataset": ("pairs.zip", data, "application/zip")},
                            data={"name": "small", "config": json.dumps(config)})


def test_the_minimum_side_follows_the_resolution(app_by_hand: Any, accounts: SqlAccounts,  # noqa: F811
                                                 tmp_path: Path) -> None:
    assert (min_side_for(128), min_side_for(512), min_side_for(1024)) == (64, 256, 512)
    client, _ = user_client(app_by_hand, accounts)
    data = zip_folder(make_pairs(tmp_path / "ds", 3, size=(128, 128)))
    accepted = post(client, data, CONFIG)  # resolution 128: 128 px pairs are big enough
    assert accepted.status_code == 201, accepted.text
    refused = post(client, data, {**CONFIG, "resolution": 512})
    assert refused.status_code == 422 and "below 256 px" in refused.text
