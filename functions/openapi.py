"""The API's closed sets in ``functions/openapi.yaml`` come from the code, not from a second list.

Each ``enum:`` line marked ``# generated: <Name>`` is rewritten from :data:`CLOSED_SETS`:

    .venv/bin/python -m functions.openapi           # rewrite the marked lines
    .venv/bin/python -m functions.openapi --check   # exit 1 if the file differs (tests run this)
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from ichseg.errors import ErrorCode
from ichseg.pipeline.config import ALLOWED_UPLOAD_TYPES
from ichseg.pipeline.jobs import JobState
from ichseg.segmentation import Finding

SPEC = Path(__file__).with_name("openapi.yaml")
CLOSED_SETS: dict[str, Iterable[str]] = {
    "JobState": [state.value for state in JobState],
    "ErrorCode": [code.value for code in ErrorCode],
    "UploadContentType": ALLOWED_UPLOAD_TYPES,
    "Finding": [finding.value for finding in Finding],
}
_MARKED = re.compile(r"^(?P<indent>\s*)enum: \[[^\]]*\]  # generated: (?P<name>\w+)$")


def render(spec: str) -> str:
    """The spec with every marked ``enum:`` line regenerated."""

    def line(text: str) -> str:
        match = _MARKED.match(text)
        if match is None:
            return text
        values = ", ".join(CLOSED_SETS[match["name"]])
        return f"{match['indent']}enum: [{values}]  # generated: {match['name']}"

    return "\n".join(line(text) for text in spec.split("\n"))


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite (or, with ``--check``, verify) the generated enums of ``functions/openapi.yaml``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report whether the file is up to date")
    args = parser.parse_args(argv)
    current = SPEC.read_text()
    generated = render(current)
    if args.check:
        if generated != current:
            print(f"{SPEC} is out of date: run python -m functions.openapi", file=sys.stderr)
            return 1
        return 0
    SPEC.write_text(generated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
