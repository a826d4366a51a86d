"""Which container image each Lambda function runs, and which installed distributions that image carries.

template.yaml names each function's Dockerfile (``Metadata.Dockerfile``); each Dockerfile installs
one requirements file (``pip install -r /tmp/requirements/<file>``). The distributions a requirements
file pulls in, transitive dependencies and extras included, are resolved here from the metadata of
an environment that has them installed (``.venv`` holds every Lambda pin), without a network or
Docker. Used by ``bench/cold_start_bench.py`` (image sizes) and ``tests/pipeline/test_lean_functions.py``
(what the slim image lacks, and that its handlers import with nothing else).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ichseg.paths import REPO_ROOT
from infrastructure.cloud_template import load_template

_PIP_INSTALL = re.compile(r"pip install -r /tmp/requirements/(\S+\.txt)")


@dataclass(frozen=True)
class FunctionImage:
    """One function's image: its handler module, Dockerfile and requirements file (repository paths)."""

    function: str
    """Logical id in template.yaml, e.g. ``ApiFunction``."""
    module: str
    """The handler's module, e.g. ``functions.api``."""
    dockerfile: str
    requirements: str


def function_images(repo: Path = REPO_ROOT) -> dict[str, FunctionImage]:
    """Every ``AWS::Serverless::Function`` of ``repo``'s template.yaml, by handler module."""
    images: dict[str, FunctionImage] = {}
    for logical_id, resource in load_template(repo / "template.yaml")["Resources"].items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        command = resource["Properties"]["ImageConfig"]["Command"][0]  # "functions/api.handler"
        module = command.rsplit(".", 1)[0].replace("/", ".")
        dockerfile = resource["Metadata"]["Dockerfile"]
        installed = _PIP_INSTALL.search((repo / dockerfile).read_text())
        if installed is None:
            raise ValueError(f"{dockerfile}: no 'pip install -r /tmp/requirements/<file>.txt'")
        images[module] = FunctionImage(logical_id, module, dockerfile, f"requirements/{installed.group(1)}")
    return images


def top_level_requirements(path: Path) -> list[Requirement]:
    """The requirements a pip requirements file names, following ``-r`` includes."""
    found: list[Requirement] = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            found += top_level_requirements(path.parent / line[3:].strip())
        else:
            found.append(Requirement(line))
    return found


def installed_closure(requirements: list[Requirement]) -> dict[str, metadata.Distribution]:
    """Every distribution the requirements need, found in this interpreter's environment.

    Each requirement's dependencies are followed when their marker holds on this platform without
    an extra or with one of the extras asked for (``aws-lambda-powertools[tracer]`` brings
    aws-xray-sdk). :class:`importlib.metadata.PackageNotFoundError` names a missing one.
    """
    environment: dict[str, str] = {key: str(value) for key, value in default_environment().items()}
    closure: dict[str, metadata.Distribution] = {}
    done: set[tuple[str, str]] = set()  # (distribution, extra) pairs whose dependencies are queued; "" = none
    pending = list(requirements)
    while pending:
        req = pending.pop()
        key = canonicalize_name(req.name)
        if key not in closure:
            closure[key] = metadata.distribution(req.name)
        # A distribution met again with another extra (google-api-core, then google-api-core[grpc])
        # adds that extra's dependencies.
        for extra in ("", *sorted(req.extras)):
            if (key, extra) in done:
                continue
            done.add((key, extra))
            for dependency in (Requirement(text) for text in closure[key].requires or ()):
                marker = dependency.marker
                if marker.evaluate({**environment, "extra": extra}) if marker else not extra:
                    pending.append(dependency)
    return closure


def distribution_files(dist: metadata.Distribution) -> list[tuple[str, Path]]:
    """(path relative to the environment's site-packages, installed file) for each file in RECORD.

    Entries outside site-packages (console scripts under ``bin/``) are left out.
    """
    files = []
    for entry in dist.files or ():
        if entry.parts[0] == "..":
            continue
        path = Path(str(entry.locate()))
        if path.is_file():
            files.append((str(entry), path))
    return files


def distribution_bytes(dist: metadata.Distribution) -> int:
    """Bytes on disk of a distribution's installed files (byte code compiled at install included)."""
    return sum(path.stat().st_size for _, path in distribution_files(dist))
