"""``ichseg stack`` and ``ichseg demo``: the local stack's sub-commands, registered through the
``ichseg.commands`` entry-point group (pyproject.toml) so the core CLI never imports infrastructure.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``stack`` and ``demo`` to the ``ichseg`` command line."""
    stack = commands.add_parser(
        "stack", help="run the local stack (moto, storage emulator, endpoint, event pump, API; DICOM gateway)"
    )
    stack.add_argument("--state-dir", default="build/local-stack", help="where the stack keeps its files")
    stack.add_argument(
        "--pacs",
        metavar="AE@HOST:PORT",
        help=(
            "start the DICOM gateway; each hospital job's SEG and SR go to this PACS (e.g. ORTHANC@127.0.0.1:4242; "
            "add ?overlay for the overlay series too, ?tls for DICOM TLS)"
        ),
    )
    stack.add_argument(
        "--gateway", action="store_true", help="start the DICOM gateway even without --pacs (results stay in S3)"
    )
    stack.add_argument(
        "--gateway-port",
        type=int,
        default=0,
        help="the gateway's DICOM port (default: any free one; implies --gateway)",
    )
    stack.set_defaults(handler=_stack)

    demo = commands.add_parser("demo", help="run ichseg on the committed sample scan (CT-ICH patient 051)")
    demo.add_argument("--out", default="demo-output", help="output folder")
    demo.add_argument("--serve", action="store_true", help="keep the stack up after the job (for the viewer link)")
    demo.set_defaults(handler=_demo)


def _stack(args: argparse.Namespace) -> int:
    from infrastructure.local_stack import stack_command

    return stack_command(args)


def _demo(args: argparse.Namespace) -> int:
    """Run the whole pipeline locally on the committed sample scan, as the mobile app would use it."""
    from infrastructure.demo import run_demo

    return run_demo(Path(args.out), serve=args.serve)
