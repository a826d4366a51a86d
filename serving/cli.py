"""``ichseg endpoint``: the inference server's sub-command, registered through the ``ichseg.commands``
entry-point group so the core CLI never imports the server (Flask and gunicorn load only when it runs).
"""

from __future__ import annotations

import argparse


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``endpoint`` to the ``ichseg`` command line."""
    from ichseg.paths import SHIPPED_MODEL

    endpoint = commands.add_parser("endpoint", help="serve the model over HTTP (SageMaker container contract)")
    endpoint.add_argument("--host", default="127.0.0.1")
    endpoint.add_argument("--port", type=int, default=8080)
    endpoint.add_argument("--model", default=str(SHIPPED_MODEL), help="ONNX model (default: the shipped one)")
    endpoint.add_argument("--workers", type=int, default=1, help="gunicorn worker processes")
    endpoint.set_defaults(handler=_endpoint)


def _endpoint(args: argparse.Namespace) -> int:
    from serving.server import endpoint_command

    return endpoint_command(args)
