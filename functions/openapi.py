"""The API's OpenAPI document is generated from the code: ``functions/api.py``'s routes and the
pydantic models of ``ichseg.pipeline.api_models`` (whose closed sets are the code's enums).

``functions/openapi.json`` is the committed copy (what app developers and the local front read);
``GET /v1/openapi.json`` serves the same document.

    .venv/bin/python -m functions.openapi           # rewrite functions/openapi.json
    .venv/bin/python -m functions.openapi --check   # exit 1 if it differs from the code (tests run this)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

SPEC = Path(__file__).with_name("openapi.json")


def render() -> str:
    """The OpenAPI document the code describes, as committed."""
    from functions.api import openapi_json

    return openapi_json()


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite (or, with ``--check``, verify) ``functions/openapi.json``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report whether the file is up to date")
    args = parser.parse_args(argv)
    generated = render()
    if args.check:
        if not SPEC.exists() or SPEC.read_text() != generated:
            print(f"{SPEC} is out of date: run python -m functions.openapi", file=sys.stderr)
            return 1
        return 0
    SPEC.write_text(generated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
