"""The service signs the outputs it stores with the installation's content credentials."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from kontext_studio.bootstrap import content_credentials
from kontext_studio.core.backends.fake import FakeBackend
from kontext_studio.core.engine import Editor
from kontext_studio.core.provenance import (
    ContentCredentials,
    CredentialConfig,
    current_content_credentials,
    use_content_credentials,
)
from kontext_studio.core.provenance.inspect import inspect_provenance
from kontext_studio.core.recipe import read_recipe
from kontext_studio.service.inputs import data_url
from kontext_studio.service.server import build_app
from kontext_studio.settings import Settings
from tests.service.test_api import Client, png


@pytest.fixture()
def settings(tmp_path: Path) -> Iterator[Settings]:
    before = current_content_credentials()
    yield Settings(home=tmp_path / "home")
    use_content_credentials(before)


def test_stored_prediction_output_is_signed_by_this_installation(settings: Settings, tmp_path: Path) -> None:
    said: list[str] = []
    app = build_app(settings, "127.0.0.1", lambda: Editor({"fake": FakeBackend(step_seconds=0.0, resolution=128)}),
                    say=said.append)
    assert (settings.home / "credentials" / "signer.key").is_file()  # made at first start
    key = next(m.rsplit(": ", 1)[1] for m in said if "API key" in m)
    with TestClient(app):
        client = Client(app, key)
        r = client.post("/v1/predictions", {"model": "flux-kontext-dev",
                                            "input": {"prompt": "put it on a beach", "input_image": data_url(png()),
                                                      "seed": 3, "num_inference_steps": 2,
                                                      "output_format": "jpeg"}})
        assert r.status_code == 201, r.text
        done = client.wait(r.json()["id"])
        assert done["status"] == "succeeded", done
        image = client.http.get(done["output"]).content
        as_webp = client.http.get(done["output"].replace("/v1/files/", "/v1/convert/webp/"))
        bad_format = client.http.get(done["output"].replace("/v1/files/", "/v1/convert/gif/"))
        ca = client.http.get("/v1/credentials/ca.pem")
        bad_sig = client.http.get(done["output"].replace("/v1/files/", "/v1/convert/png/").replace("sig=", "sig=x"))
    report = inspect_provenance(image, credentials=content_credentials(settings))
    assert report.credentials == "trusted", report.summary
    (step,) = report.history
    assert step.ai and [i.relationship for i in step.ingredients] == ["parentOf"]
    assert any(a.description == "put it on a beach" for a in step.actions)
    out = tmp_path / "downloaded.jpg"
    out.write_bytes(image)
    assert read_recipe(out)["seed"] == 3

    # A download in another format keeps the recipe and the history: a transcode whose parent is the edit.
    assert as_webp.status_code == 200 and as_webp.headers["content-type"] == "image/webp"
    converted = inspect_provenance(as_webp.content, credentials=content_credentials(settings))
    assert converted.credentials == "trusted" and converted.format == "WEBP"
    newest, parent = converted.history
    assert [a.action for a in newest.actions] == ["c2pa.opened", "c2pa.transcoded"] and parent.ai
    assert converted.recipe is not None and converted.recipe["seed"] == 3
    assert bad_format.status_code == 422 and "png, jpeg or webp" in bad_format.json()["detail"]
    assert bad_sig.status_code == 403
    # Anyone can fetch the CA to trust this server's outputs; it is the one the signer chains to.
    assert ca.status_code == 200 and ca.content == (settings.home / "credentials" / "ca.pem").read_bytes()
    elsewhere = ContentCredentials(CredentialConfig(folder=tmp_path / "reader"))
    (tmp_path / "reader").mkdir()
    (tmp_path / "reader" / "ca.pem").write_bytes(ca.content)
    assert inspect_provenance(image, credentials=elsewhere).credentials == "trusted"


def test_no_ca_to_hand_out_is_a_404_problem(tmp_path: Path) -> None:
    from fastapi import FastAPI

    from kontext_studio.core.errors import KontextError
    from kontext_studio.core.provenance import credentials as credentials_module
    from kontext_studio.service.api.credentials import credentials_router
    from kontext_studio.service.api.problems import kontext_error_handler

    app = FastAPI()
    app.add_exception_handler(KontextError, kontext_error_handler)
    app.include_router(credentials_router(storage=None, verify_url=lambda *_: None))  # type: ignore[arg-type]
    before = (credentials_module._current, credentials_module._provider)
    credentials_module._current, credentials_module._provider = None, None
    try:
        r = TestClient(app).get("/v1/credentials/ca.pem")
    finally:
        credentials_module._current, credentials_module._provider = before
    assert r.status_code == 404 and "does not sign" in r.json()["detail"]
