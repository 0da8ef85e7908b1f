"""A result downloaded as JPEG or WebP from the studio keeps its recipe and signed history."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from kontext_studio.core.provenance import (
    ContentCredentials,
    CredentialConfig,
    current_content_credentials,
    use_content_credentials,
)
from kontext_studio.core.provenance.inspect import inspect_provenance
from tests.web.conftest import Studio, picture
from tests.web.test_studio_flow import upload, wait_checked, wait_result


@pytest.fixture()
def signer(tmp_path: Path) -> Iterator[ContentCredentials]:
    """This server's signer (the studio fixture builds the app without the composition root)."""
    before = current_content_credentials()
    creds = ContentCredentials(CredentialConfig(folder=tmp_path / "credentials"))
    use_content_credentials(creds)
    yield creds
    use_content_credentials(before)


@pytest.mark.parametrize(("fmt", "pil"), [("jpeg", "JPEG"), ("webp", "WEBP")])
def test_converted_download_is_signed_with_the_edit_as_parent(fmt: str, pil: str, page: Any, studio: Studio,
                                                              signer: ContentCredentials, tmp_path: Path) -> None:
    page.goto(studio.url + "/")
    upload(page, picture(tmp_path / "her.png", (200, 120, 90)))
    wait_checked(page, 1)
    page.fill("#prompt", "Put her on a beach at sunset, keep her face and pose")
    page.get_by_test_id("generate").click()
    wait_result(page)
    page.select_option("#download-format", fmt)
    with page.expect_download() as download:
        page.get_by_test_id("download").click()
    expect(page.locator("#result-error")).to_be_empty()
    report = inspect_provenance(Path(download.value.path()), credentials=signer)
    assert report.format == pil and report.credentials == "trusted", report.summary
    newest, parent = report.history
    assert newest.actions[-1].action == "c2pa.transcoded" and parent.ai
    assert report.recipe is not None and "beach" in report.recipe["instruction"]
