"""``ichseg gateway`` (and ``python -m gateway``): run the DICOM gateway in the foreground.

Flags mirror the ``ICHSEG_GATEWAY_*`` environment variables and override them; the bucket, table and
delivery queue come from ``ICHSEG_BUCKET``, ``ICHSEG_TABLE`` and ``ICHSEG_DELIVERY_QUEUE_URL``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``gateway`` to the ``ichseg`` command line."""
    parser = commands.add_parser("gateway", help="run the DICOM gateway (C-STORE in, SEG + SR back to PACS)")
    add_arguments(parser)
    parser.set_defaults(handler=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags (each overrides its environment variable)."""
    parser.add_argument("--ae-title", help="our AE title (ICHSEG_GATEWAY_AE_TITLE, default ICHSEG)")
    parser.add_argument("--host", help="address to listen on (ICHSEG_GATEWAY_HOST, default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port to listen on (ICHSEG_GATEWAY_PORT, default 11112)")
    parser.add_argument("--spool-dir", type=Path, help="where received instances wait (ICHSEG_GATEWAY_SPOOL_DIR)")
    parser.add_argument(
        "--allowed-ae", action="append", default=[], help="calling AE title allowed to send (repeatable; default any)"
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        help="a study none of whose series got an instance for this long is complete: all its series go up as one "
        "zip, one job (ICHSEG_GATEWAY_IDLE_SECONDS, default 10)",
    )
    parser.add_argument("--max-associations", type=int, help="concurrent associations (default 8)")
    parser.add_argument("--max-spool-bytes", type=int, help="spool bound; past it instances get 0xA700")
    parser.add_argument(
        "--destination",
        action="append",
        default=[],
        metavar="SITE=AE@HOST:PORT[?tls&overlay]",
        help="a site's PACS (repeatable; ?tls: DICOM TLS; ?overlay: the overlay series too)",
    )
    parser.add_argument(
        "--default-destination", metavar="AE@HOST:PORT[?tls&overlay]", help="PACS for sites without their own"
    )
    parser.add_argument(
        "--hl7-destination",
        action="append",
        default=[],
        metavar="SITE=[APP[^FACILITY]@]HOST:PORT",
        help="a site's RIS: an HL7 ORU^R01 of each result over MLLP (repeatable)",
    )
    parser.add_argument(
        "--fhir-destination",
        action="append",
        default=[],
        metavar="SITE=https://...",
        help="a site's FHIR R4 server: a DiagnosticReport of each result (repeatable)",
    )
    parser.add_argument(
        "--status-port",
        type=int,
        help="the read-only status page's HTTP port (ICHSEG_GATEWAY_STATUS_PORT; default off)",
    )
    parser.add_argument(
        "--tls-certificate", type=Path, help="DICOM TLS: our certificate (PEM; also shown to ?tls PACS)"
    )
    parser.add_argument("--tls-key", type=Path, help="DICOM TLS: its private key (PEM)")
    parser.add_argument("--tls-ca", type=Path, help="DICOM TLS: CA that callers' certificates must chain to")
    parser.add_argument(
        "--delivery-tls-ca",
        type=Path,
        help="DICOM TLS to AE@HOST:PORT?tls destinations: CA bundle the PACS's certificate must chain to "
        "(ICHSEG_GATEWAY_DELIVERY_TLS_CA; default the system trust store)",
    )


def settings_from(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Any:
    """The environment's settings with the flags given applied on top."""
    from gateway.settings import (
        Destination,
        GatewaySettings,
        parse_destinations,
        parse_fhir_destination,
        parse_hl7_destination,
        per_site,
    )

    env = dict(os.environ if environ is None else environ)
    if args.spool_dir is not None:
        env["ICHSEG_GATEWAY_SPOOL_DIR"] = str(args.spool_dir)
    settings = GatewaySettings.from_env(env)
    overrides: dict[str, Any] = {
        "ae_title": args.ae_title,
        "host": args.host,
        "port": args.port,
        "idle_seconds": args.idle_seconds,
        "max_associations": args.max_associations,
        "max_spool_bytes": args.max_spool_bytes,
        "allowed_calling_aes": tuple(args.allowed_ae) or None,
        "destinations": parse_destinations(",".join(args.destination)) or None,
        "default_destination": Destination.parse(args.default_destination) if args.default_destination else None,
        "tls_certificate": args.tls_certificate,
        "tls_key": args.tls_key,
        "tls_ca": args.tls_ca,
        "delivery_tls_ca": args.delivery_tls_ca,
        "hl7_destinations": per_site(",".join(args.hl7_destination), parse_hl7_destination, "host:port") or None,
        "fhir_destinations": per_site(",".join(args.fhir_destination), parse_fhir_destination, "https://...") or None,
        "status_port": args.status_port,
    }
    return dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    """Run until SIGTERM or Ctrl-C; a configuration mistake is one line on stderr and exit status 2."""
    from gateway.service import GatewayService
    from gateway.settings import SettingsError

    logging.basicConfig(level=os.environ.get("ICHSEG_LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s %(message)s")
    try:
        service = GatewayService(settings_from(args))
        service.start()
    except (SettingsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        host, port = service.address
        print(f"DICOM gateway {service.settings.ae_title} on {host}:{port} (Ctrl-C stops)", flush=True)
        stopped.wait()
    except KeyboardInterrupt:
        pass
    finally:
        service.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m gateway``."""
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
