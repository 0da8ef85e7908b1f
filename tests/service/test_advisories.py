"""The dependency guard: no known advisory affects what is installed, or what pyproject.toml allows."""

from __future__ import annotations

from pathlib import Path

from kontext_studio.service.security.advisories import (
    ADVISORIES,
    check_installed,
    check_requirements,
    check_versions,
    lower_bounds,
)

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_installed_packages_have_no_known_advisories() -> None:
    hits = check_installed()
    assert hits == [], "upgrade: " + "; ".join(map(str, hits))


def test_pyproject_floors_exclude_every_advisory() -> None:
    hits = check_requirements(PYPROJECT.read_text())
    assert hits == [], "raise the lower bound in pyproject.toml: " + "; ".join(map(str, hits))


def test_old_releases_are_flagged_with_the_advisory_and_the_fix() -> None:
    hits = check_versions({"Pillow": "10.1.0", "starlette": "0.40.0", "Jinja2": "3.1.6", "h11": "0.14.0"})
    found = {(h.package, h.advisory.id) for h in hits}
    assert ("pillow", "CVE-2023-50447") in found and ("pillow", "CVE-2024-28219") in found
    assert ("starlette", "CVE-2025-54121") in found and ("starlette", "CVE-2024-47874") not in found
    assert ("h11", "CVE-2025-43859") in found
    assert not any(p == "jinja2" for p, _ in found)
    message = str(next(h for h in hits if h.advisory.id == "CVE-2025-43859"))
    assert "h11 0.14.0" in message and ">= 0.16.0" in message


def test_an_advisory_with_an_introduced_version_spares_older_releases() -> None:
    dds = next(a for a in ADVISORIES if a.id == "CVE-2025-48379")
    assert not dds.affects("11.1.0") and dds.affects("11.2.1") and not dds.affects("11.3.0")


def test_a_loose_requirement_in_pyproject_is_caught() -> None:
    text = PYPROJECT.read_text().replace('"jinja2>=3.1.6"', '"jinja2>=3.1"')
    assert {h.advisory.id for h in check_requirements(text)} >= {"CVE-2025-27516", "CVE-2024-22195"}
    assert lower_bounds(["pillow>=10.4", "h11", "x==1.2"]) == {"pillow": "10.4", "h11": "0", "x": "1.2"}
