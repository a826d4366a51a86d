"""``ichseg scans ...``: submit a scan, follow it, list, download, delete and open results.

    export ICHSEG_TOKEN=...                   # a Firebase ID token (or --token-file FILE)
    ichseg scans --api https://.../ submit head.mp4 --wait
    ichseg scans status JOB | list | download JOB --out DIR | delete JOB | open JOB

``--api`` defaults to ``ICHSEG_API``. Registered through the ``ichseg.commands`` entry point, so
the core CLI never imports it. Exit codes: 0 done, 1 the API or the job failed (the message says
why), 2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from client.api import ScansClient

EXIT_FAILED = 1
EXIT_USAGE = 2


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``scans`` and its sub-commands to the ``ichseg`` command line."""
    scans = commands.add_parser("scans", help="use a deployed or local ichseg API (submit, status, list, ...)")
    scans.add_argument("--api", default=os.environ.get("ICHSEG_API", ""), help="API base URL (default: $ICHSEG_API)")
    scans.add_argument("--token-file", type=Path, help="file holding a Firebase ID token (default: $ICHSEG_TOKEN)")
    actions = scans.add_subparsers(dest="action", required=True)
    submit = actions.add_parser("submit", help="upload a scan and start a job")
    submit.add_argument("file", type=Path)
    submit.add_argument("--wait", action="store_true", help="follow the job until it is DONE or FAILED")
    resume = actions.add_parser("resume", help="finish an interrupted upload of a large scan (only the missing parts)")
    resume.add_argument("job_id")
    resume.add_argument("file", type=Path)
    resume.add_argument("--wait", action="store_true", help="follow the job until it is DONE or FAILED")
    actions.add_parser("status", help="a job's state, progress and result").add_argument("job_id")
    listing = actions.add_parser("list", help="your jobs, newest first")
    listing.add_argument("--limit", type=int, default=20)
    download = actions.add_parser("download", help="save a DONE job's results")
    download.add_argument("job_id")
    download.add_argument("--out", type=Path, required=True)
    actions.add_parser("delete", help="delete a job, its files and its Firebase copy").add_argument("job_id")
    actions.add_parser("open", help="print the results viewer's link").add_argument("job_id")
    scans.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run one ``ichseg scans`` action; errors are one line on stderr, never a traceback."""
    from client.api import ClientError, JobFailed, ScansClient

    try:
        if not args.api:
            print("error: no API: pass --api URL or set ICHSEG_API", file=sys.stderr)
            return EXIT_USAGE
        token = args.token_file.read_text().strip() if args.token_file else os.environ.get("ICHSEG_TOKEN", "")
        client = ScansClient(args.api, token)
        return _ACTIONS[args.action](client, args)
    except JobFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:  # an unreadable token file, an unwritable --out
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _submit(client: ScansClient, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from client.api import Progress

    size = args.file.stat().st_size if args.file.is_file() else 0
    with tqdm(total=size, unit="B", unit_scale=True, desc="upload", file=sys.stderr, leave=False) as bar:
        if args.action == "resume":
            client.resume(args.job_id, args.file, on_bytes=bar.update)
            job_id = args.job_id
        else:
            job_id = client.submit(args.file, on_bytes=bar.update)
    print(job_id)
    if not args.wait:
        return 0
    with tqdm(total=0, unit="slice", desc="segmenting", file=sys.stderr) as bar:

        def show(progress: Progress) -> None:
            bar.total = progress.total or bar.total
            bar.set_postfix_str(progress.state)
            bar.update(progress.done - bar.n)

        status = client.wait(job_id, on_progress=show)
    print(json.dumps({"job_id": job_id, "state": status["state"], "result": status.get("result")}))
    return 0


def _status(client: ScansClient, args: argparse.Namespace) -> int:
    status = client.status(args.job_id)
    print(json.dumps({k: v for k, v in status.items() if k != "results"}, indent=2))
    return 0


def _list(client: ScansClient, args: argparse.Namespace) -> int:
    page = client.list(limit=args.limit)
    for job in page["scans"]:
        print(f"{job['job_id']}  {job['state']:<10}  {job.get('created_at', '')}")
    return 0


def _download(client: ScansClient, args: argparse.Namespace) -> int:
    for name, path in client.download(args.job_id, args.out).items():
        print(f"{name}: {path}")
    return 0


def _delete(client: ScansClient, args: argparse.Namespace) -> int:
    client.delete(args.job_id)
    print(f"deleted {args.job_id}")
    return 0


def _open(client: ScansClient, args: argparse.Namespace) -> int:
    print(client.viewer_url(args.job_id))
    return 0


_ACTIONS = {
    "submit": _submit,
    "resume": _submit,
    "status": _status,
    "list": _list,
    "download": _download,
    "delete": _delete,
    "open": _open,
}
