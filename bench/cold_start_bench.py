"""Cold start of each Lambda handler: import time and the size of the packages its image carries.

For every function in ``template.yaml`` this reads which Dockerfile builds its image
(``Metadata.Dockerfile``) and which requirements file that Dockerfile installs, then prints

- **import**: the median, over ``--runs`` fresh interpreters, of the time ``import functions.<name>``
  takes: what a Lambda cold start pays before the first event, after the interpreter is up
  (module-level code only; the first invocation's client set-up is not included);
- **packages**: the installed size of the distributions the requirements file pulls in, transitive
  dependencies included, summed from the files each distribution's metadata (``RECORD``) lists in
  the environment this script runs in (``.venv``, which holds every Lambda pin). The runtime
  interface client the Dockerfiles add (awslambdaric and two small dependencies) is the same in
  every image and is left out, as are the base image and the application code.

Run it before and after a change to the images or to the import chains, with the same load::

    .venv/bin/python bench/cold_start_bench.py [--runs 7] [--python /tmp/slim-venv/bin/python]

``--python`` times the imports with another interpreter (e.g. a virtual environment made from one
image's requirements file), which also proves the handlers import with nothing else installed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ichseg.paths import REPO_ROOT
from infrastructure.lambda_images import distribution_bytes, function_images, installed_closure, top_level_requirements

HEAVY = ("cv2", "av", "onnxruntime", "highdicom", "pydicom", "nibabel", "scipy", "PIL", "numpy", "firebase_admin")
"""Modules worth naming when a handler's import loads them."""

# The child prints one line: seconds spent importing the handler, then the heavy modules it loaded.
_CHILD = """
import sys, time
started = time.perf_counter()
import {module}
elapsed = time.perf_counter() - started
print(elapsed, ",".join(m for m in {heavy!r} if m in sys.modules) or "-")
"""


@dataclass(frozen=True)
class ImageSize:
    """The distributions one requirements file installs and their total size on disk."""

    requirements: str
    distributions: dict[str, int]
    missing: tuple[str, ...]
    """Distributions the file names that this environment does not have (not counted)."""

    @property
    def total_bytes(self) -> int:
        return sum(self.distributions.values())

    def largest(self, count: int = 6) -> list[tuple[str, int]]:
        return sorted(self.distributions.items(), key=lambda item: -item[1])[:count]


def image_size(tree: Path, requirements: str) -> ImageSize:
    """Installed size of what ``requirements`` (in ``tree``) pulls in, from this environment's metadata."""
    wanted, missing = [], []
    for req in top_level_requirements(tree / requirements):
        try:
            metadata.distribution(req.name)
            wanted.append(req)
        except metadata.PackageNotFoundError:
            missing.append(req.name)
    closure = installed_closure(wanted)
    return ImageSize(requirements, {name: distribution_bytes(d) for name, d in closure.items()}, tuple(missing))


def import_seconds(python: str, tree: Path, module: str, runs: int) -> tuple[float, list[float], str]:
    """Median import time of ``module`` over fresh interpreters, all samples, the heavy modules it loaded."""
    samples: list[float] = []
    heavy = ""
    # ``tree`` first on the path, as /var/task is in the image; byte code is read, not rewritten.
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    for _ in range(runs):
        out = subprocess.run(
            [python, "-c", _CHILD.format(module=module, heavy=HEAVY)],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout.split()
        samples.append(float(out[0]))
        heavy = out[1]
    return statistics.median(samples), samples, heavy


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="fresh interpreters per handler (median reported)")
    parser.add_argument("--python", default=sys.executable, help="interpreter that times the imports")
    parser.add_argument(
        "--tree", type=Path, default=REPO_ROOT, help="checkout to measure (e.g. `git archive` of an older commit)"
    )
    parser.add_argument("--only", nargs="*", default=None, help="handler modules to time, e.g. functions.api")
    args = parser.parse_args(argv)

    tree = args.tree.resolve()
    images = function_images(tree)
    sizes = {req: image_size(tree, req) for req in sorted({image.requirements for image in images.values()})}
    print(f"tree {tree}; imports timed with {args.python}; load average {_load()}")
    print("\nimage requirements            distributions  installed MB  largest (MB)")
    for req, size in sizes.items():
        largest = ", ".join(f"{name} {b / 1e6:.0f}" for name, b in size.largest())
        missing = f" (not installed here, not counted: {', '.join(size.missing)})" if size.missing else ""
        print(f"{req:<29} {len(size.distributions):>13} {size.total_bytes / 1e6:>13.0f}  {largest}{missing}")

    print("\nhandler                image                        import median ms  samples ms  heavy modules loaded")
    for module, image in images.items():
        if args.only and module not in args.only:
            continue
        median, samples, heavy = import_seconds(args.python, tree, module, args.runs)
        spread = "/".join(f"{s * 1000:.0f}" for s in sorted(samples))
        print(f"{module:<22} {image.requirements:<28} {median * 1000:>16.0f}  {spread}  {heavy}")
    print(f"\nload average after: {_load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
