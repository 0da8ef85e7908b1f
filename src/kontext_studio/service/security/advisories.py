"""Known security advisories for the packages that parse untrusted input here: images (Pillow) and HTTP
(Starlette, python-multipart, h11, Jinja2, urllib3, requests).

Advisory databases (OSV, PyPI's JSON API) are not reachable from every machine this runs on, so the
advisories that matter for this service are kept here as data: each one names the affected range, and two
checks use it. ``check_installed`` reads the versions in the running environment (``kontext doctor`` and the
test suite call it), and ``check_requirements`` reads the lower bounds in ``pyproject.toml`` so that a fresh
install can never resolve to an affected release. Add an entry when an advisory is published for one of these
packages, and raise the matching lower bound in ``pyproject.toml`` in the same change.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version


@dataclass(frozen=True)
class Advisory:
    """One published advisory: releases in ``[introduced, fixed)`` are affected."""

    package: str
    id: str
    fixed: str
    summary: str
    introduced: str = "0"

    def affects(self, version: str) -> bool:
        """Whether ``version`` lies in the affected range (an unparsable version counts as affected)."""
        try:
            v = Version(version)
        except InvalidVersion:
            return True
        return Version(self.introduced) <= v < Version(self.fixed)


ADVISORIES: tuple[Advisory, ...] = (
    Advisory("pillow", "CVE-2023-44271", "10.0.0", "ImageFont: unbounded text length exhausts memory"),
    Advisory("pillow", "CVE-2023-50447", "10.2.0", "ImageMath.eval: arbitrary code execution"),
    Advisory("pillow", "CVE-2024-28219", "10.3.0", "_imagingcms: buffer overflow"),
    Advisory("pillow", "CVE-2025-48379", "11.3.0", "DDS encoder: heap buffer overflow", introduced="11.2.0"),
    Advisory("starlette", "CVE-2024-47874", "0.40.0", "multipart fields without a filename buffered without limit"),
    Advisory("starlette", "CVE-2025-54121", "0.47.2", "large multipart uploads block the event loop"),
    Advisory("starlette", "CVE-2025-62727", "0.49.1", "FileResponse Range header parsing is quadratic"),
    Advisory("python-multipart", "CVE-2024-24762", "0.0.7", "Content-Type header ReDoS"),
    Advisory("python-multipart", "CVE-2024-53981", "0.0.18", "boundary handling: excessive logging DoS"),
    Advisory("h11", "CVE-2025-43859", "0.16.0", "lenient chunked-encoding parsing allows request smuggling"),
    Advisory("jinja2", "CVE-2024-22195", "3.1.3", "xmlattr filter accepts keys with spaces"),
    Advisory("jinja2", "CVE-2024-34064", "3.1.4", "xmlattr filter accepts keys with / > ="),
    Advisory("jinja2", "CVE-2024-56201", "3.1.5", "template file names can execute code"),
    Advisory("jinja2", "CVE-2024-56326", "3.1.5", "sandbox escape through str.format"),
    Advisory("jinja2", "CVE-2025-27516", "3.1.6", "sandbox escape through the attr filter"),
    Advisory("urllib3", "CVE-2024-37891", "2.2.2", "Proxy-Authorization kept on cross-origin redirects"),
    Advisory("urllib3", "CVE-2025-50181", "2.5.0", "redirects not disabled by a retries setting"),
    Advisory("requests", "CVE-2024-35195", "2.32.0", "verify=False sticks to a connection pool"),
    Advisory("requests", "CVE-2024-47081", "2.32.4", ".netrc credentials leak to other hosts"),
)


@dataclass(frozen=True)
class AdvisoryHit:
    """An installed (or allowed) version that an advisory affects, and the version that fixes it."""

    package: str
    version: str
    advisory: Advisory

    def __str__(self) -> str:
        a = self.advisory
        return f"{self.package} {self.version}: {a.id} ({a.summary}); upgrade to >= {a.fixed}"


def check_versions(versions: Mapping[str, str], advisories: Iterable[Advisory] = ADVISORIES) -> list[AdvisoryHit]:
    """Advisories affecting the given ``{package: version}`` (names in any PyPI spelling).

    Returns:
        One hit per (package, advisory); empty when nothing known applies.
    """
    by_name: dict[str, str] = {str(canonicalize_name(k)): v for k, v in versions.items()}
    return [AdvisoryHit(a.package, by_name[a.package], a) for a in advisories
            if a.package in by_name and a.affects(by_name[a.package])]


def installed_versions(packages: Iterable[str] | None = None) -> dict[str, str]:
    """Versions of the watched packages installed in this environment (missing ones left out)."""
    names = set(packages) if packages is not None else {a.package for a in ADVISORIES}
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def check_installed() -> list[AdvisoryHit]:
    """Advisories affecting the packages installed in this environment."""
    return check_versions(installed_versions())


def lower_bounds(requirements: Iterable[str]) -> dict[str, str]:
    """The lowest version each requirement allows (``>=``, ``==``, ``~=``); unbounded ones map to ``"0"``."""
    bounds: dict[str, str] = {}
    for line in requirements:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        lows = [s.version for s in req.specifier if s.operator in (">=", "==", "~=")]
        low = max(lows, key=Version) if lows else "0"
        name = str(canonicalize_name(req.name))
        if name not in bounds or Version(low) > Version(bounds[name]):
            bounds[name] = low
    return bounds


def check_requirements(pyproject_text: str) -> list[AdvisoryHit]:
    """Advisories affecting the lowest release ``pyproject.toml``'s dependencies allow (all extras).

    Only packages listed directly are checked: a transitive dependency is bounded by its parent.
    """
    import tomllib

    project = tomllib.loads(pyproject_text).get("project", {})
    lines = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        lines += [x for x in extra if not re.match(r"^kontext-studio\b", x)]
    return check_versions(lower_bounds(lines))
