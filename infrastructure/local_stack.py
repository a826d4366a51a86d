"""The local stack: the whole cloud shape on one machine, with real protocol peers.

    with LocalStack() as stack:          # or `ichseg stack` in the foreground
        stack.api_url, stack.token("alice"), stack.wait_for_job(job_id) ...

What runs (all on 127.0.0.1, free ports):

- moto's server (:mod:`infrastructure.moto_server`): S3 (one bucket, real S3 -> SQS
  notifications for ``uploads/`` and ``ingest/``), SQS (ingest, segment, assemble queues, each
  with a dead-letter queue, maxReceiveCount 3), DynamoDB (the jobs table: ``by_owner`` index, TTL);
- gcp-storage-emulator: Firebase Storage (the mirror's bucket);
- the inference server, ``ichseg endpoint`` (gunicorn + ONNX Runtime) with the model, reached by
  boto3's ``sagemaker-runtime`` client through ``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME``;
- the six functions, each in its own worker process(es) (:mod:`infrastructure.lambda_runtime`);
- an event pump per queue: long-polls, passes Lambda's SQS event JSON to the function, deletes what
  succeeded and honours ``batchItemFailures`` (what Lambda's event source mapping does);
- a watchdog tick (the EventBridge schedule) and the API front (:mod:`infrastructure.api_front`)
  with a locally trusted Firebase token issuer (:mod:`infrastructure.token_issuer`).

The functions see the same environment variables as in the cloud; only the addresses differ.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ichseg.paths import REPO_ROOT, SHIPPED_MODEL
from ichseg.pipeline.jobs import Job, JobState, JobStore
from infrastructure.lambda_runtime import (
    ACCOUNT_ID,
    FunctionSpec,
    LocalFunction,
    scheduled_event,
    sqs_event,
)
from infrastructure.token_issuer import LocalTokenIssuer

log = logging.getLogger("ichseg.local_stack")

FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
QUEUES = ("ingest", "segment", "assemble")
"""Queue -> the function its pump feeds: ingest -> split, segment -> segment, assemble -> assemble."""
QUEUE_FUNCTIONS = {"ingest": "split", "segment": "segment", "assemble": "assemble"}


class StackError(RuntimeError):
    """The local stack cannot start (missing model, a service that does not come up)."""


@dataclass(frozen=True)
class StackSettings:
    """How the local stack is laid out; the defaults suit ``ichseg stack`` and ``make demo``."""

    state_dir: Path = REPO_ROOT / "build" / "local-stack"
    model: Path = SHIPPED_MODEL
    region: str = "us-east-1"
    bucket: str = "ichseg-local"
    table: str = "ichseg-jobs"
    endpoint_name: str = "ichseg-local"
    firebase_project: str = "ichseg-local"
    firebase_bucket: str = "ichseg-local.appspot.com"
    visibility_timeout: Mapping[str, int] = field(
        default_factory=lambda: {"ingest": 120, "segment": 60, "assemble": 120}
    )
    """Seconds a received message stays hidden; a failed one is retried after this."""
    max_receive_count: int = 3
    batch_size: Mapping[str, int] = field(default_factory=lambda: {"ingest": 1, "segment": 1, "assemble": 1})
    concurrency: Mapping[str, int] = field(
        default_factory=lambda: {"api": 2, "authorizer": 1, "split": 1, "segment": 2, "assemble": 1, "watchdog": 1}
    )
    watchdog_interval_seconds: float = 30.0
    poll_wait_seconds: int = 1
    endpoint_workers: int = 1
    environment: Mapping[str, str] = field(default_factory=dict)
    """Extra variables for every function (e.g. ``ICHSEG_JOB_DEADLINE_SECONDS``)."""


@dataclass
class Invocation:
    """One function invocation by the pump (for tests and the demo's timing)."""

    function: str
    bodies: list[str]
    failed_ids: list[str]
    error: dict[str, Any] | None
    started: float
    seconds: float
    receive_counts: list[int]


@dataclass(frozen=True)
class QueueInfo:
    name: str
    url: str
    arn: str
    dlq_url: str


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LocalStack:
    """Starts everything in :meth:`start` (or ``with``), stops it in :meth:`stop`."""

    def __init__(self, settings: StackSettings | None = None, **overrides: Any) -> None:
        self.settings = replace(settings or StackSettings(), **overrides)
        self.issuer = LocalTokenIssuer(self.settings.firebase_project)
        self.invocations: list[Invocation] = []
        self.functions: dict[str, LocalFunction] = {}
        self.queues: dict[str, QueueInfo] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._moto: Any = None
        self._storage: Any = None
        self._endpoint: subprocess.Popen[bytes] | None = None
        self._front: Any = None
        self.moto_url = self.storage_url = self.endpoint_url = self.api_url = ""

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> LocalStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        s = self.settings
        if not Path(s.model).is_file():
            raise StackError(
                f"model not found: {s.model}. Train and export one (see models/MODEL_CARD.md and training/), "
                "or pass another ONNX model"
            )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for old in self.log_dir.glob("*.log"):  # one run's logs per state dir
            old.unlink()
        self._start_endpoint()  # slowest to come up (ONNX Runtime session + warm-up): first
        self._start_moto()
        self._create_aws_resources()
        self._start_storage_emulator()
        self._start_functions()
        self._wait_for_endpoint()
        self._start_front()
        for queue in QUEUES:
            self._spawn(self._pump, queue, name=f"ichseg-pump-{queue}")
        self._spawn(self._watchdog_ticks, name="ichseg-watchdog")

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=self.settings.poll_wait_seconds + 5)
        if self._front is not None:
            self._front.stop()
        for function in self.functions.values():
            function.close()
        self._stop_endpoint()
        if self._storage is not None:
            self._storage.stop()
        if self._moto is not None:
            self._moto.stop()

    @property
    def log_dir(self) -> Path:
        return Path(self.settings.state_dir) / "logs"

    # ------------------------------------------------------------------ services

    def _start_endpoint(self) -> None:
        port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{port}"
        command = [
            sys.executable,
            "-m",
            "ichseg.cli",
            "endpoint",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--model",
            str(self.settings.model),
            "--workers",
            str(self.settings.endpoint_workers),
        ]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / "endpoint.log", "ab") as output:
            self._endpoint = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=REPO_ROOT)

    def _wait_for_endpoint(self, timeout: float = 180.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self._endpoint is None or self._endpoint.poll() is not None:
                raise StackError(
                    f"the inference server exited; see {self.log_dir / 'endpoint.log'}:\n"
                    + self._tail(self.log_dir / "endpoint.log")
                )
            try:
                with urllib.request.urlopen(self.endpoint_url + "/ping", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        raise StackError(f"the inference server did not become ready in {timeout:.0f} s")

    def _stop_endpoint(self) -> None:
        if self._endpoint is not None and self._endpoint.poll() is None:
            self._endpoint.send_signal(signal.SIGTERM)
            try:
                self._endpoint.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._endpoint.kill()
                self._endpoint.wait()
        self._endpoint = None

    @contextmanager
    def endpoint_down(self) -> Iterator[None]:
        """Stop the inference server for the duration of the block (connections are refused), then restart it."""
        self._stop_endpoint()
        try:
            yield
        finally:
            port = int(self.endpoint_url.rsplit(":", 1)[1])
            command = [
                sys.executable,
                "-m",
                "ichseg.cli",
                "endpoint",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--model",
                str(self.settings.model),
                "--workers",
                str(self.settings.endpoint_workers),
            ]
            with open(self.log_dir / "endpoint.log", "ab") as output:
                self._endpoint = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
            self._wait_for_endpoint()

    def _start_moto(self) -> None:
        from infrastructure.moto_server import MotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._moto = MotoServer().start()
        self.moto_url = self._moto.url
        self._deleter = self.aws("sqs")  # boto3 clients are thread-safe: one for every settle callback

    def aws(self, service: str) -> Any:
        """A boto3 client for moto (the stack's own; the process environment is left alone)."""
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.moto_url,
            region_name=self.settings.region,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def _create_aws_resources(self) -> None:
        s = self.settings
        s3, sqs, dynamodb = self.aws("s3"), self.aws("sqs"), self.aws("dynamodb")
        s3.create_bucket(Bucket=s.bucket)
        s3.put_bucket_lifecycle_configuration(
            Bucket=s.bucket,
            LifecycleConfiguration={
                "Rules": [
                    {"ID": "expire-work", "Filter": {"Prefix": "work/"}, "Status": "Enabled", "Expiration": {"Days": 7}}
                ]
            },
        )
        for name in QUEUES:
            redrive = {"maxReceiveCount": s.max_receive_count}
            dlq_url = sqs.create_queue(QueueName=f"ichseg-{name}-dlq")["QueueUrl"]
            redrive["deadLetterTargetArn"] = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
                "Attributes"
            ]["QueueArn"]
            url = sqs.create_queue(
                QueueName=f"ichseg-{name}",
                Attributes={
                    "VisibilityTimeout": str(s.visibility_timeout[name]),
                    "RedrivePolicy": json.dumps(redrive),
                },
            )["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            self.queues[name] = QueueInfo(name, url, arn, dlq_url)
        dynamodb.create_table(
            TableName=s.table,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[
                {"AttributeName": "job_id", "AttributeType": "S"},
                {"AttributeName": "owner", "AttributeType": "S"},
                {"AttributeName": "created_at", "AttributeType": "S"},
            ],
            KeySchema=[{"AttributeName": "job_id", "KeyType": "HASH"}],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": "by_owner",
                    "KeySchema": [
                        {"AttributeName": "owner", "KeyType": "HASH"},
                        {"AttributeName": "created_at", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "ALL"},
                }
            ],
        )
        dynamodb.update_time_to_live(
            TableName=s.table, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"}
        )
        ingest_arn = self.queues["ingest"].arn
        s3.put_bucket_notification_configuration(
            Bucket=s.bucket,
            NotificationConfiguration={
                "QueueConfigurations": [
                    {
                        "Id": f"{prefix.rstrip('/')}-to-ingest",
                        "QueueArn": ingest_arn,
                        "Events": ["s3:ObjectCreated:*"],
                        "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}},
                    }
                    for prefix in ("uploads/", "ingest/")
                ]
            },
        )

    def _start_storage_emulator(self) -> None:
        from gcp_storage_emulator.server import create_server

        logging.getLogger("gcp_storage_emulator").setLevel(logging.WARNING)
        port = free_port()
        self._storage = create_server("127.0.0.1", port, in_memory=True, default_bucket=self.settings.firebase_bucket)
        self._storage.start()
        self.storage_url = f"http://127.0.0.1:{port}"

    @property
    def environment(self) -> dict[str, str]:
        """Every function's environment: the template's variables, with local addresses."""
        s = self.settings
        return {
            **FAKE_CREDENTIALS,
            "AWS_DEFAULT_REGION": s.region,
            "AWS_REGION": s.region,
            "AWS_ENDPOINT_URL": self.moto_url,
            "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": self.endpoint_url,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "ICHSEG_BUCKET": s.bucket,
            "ICHSEG_TABLE": s.table,
            "ICHSEG_SEGMENT_QUEUE_URL": self.queues["segment"].url,
            "ICHSEG_ASSEMBLE_QUEUE_URL": self.queues["assemble"].url,
            "ICHSEG_ENDPOINT_NAME": s.endpoint_name,
            "ICHSEG_MAX_RECEIVE_COUNT": str(s.max_receive_count),
            "ICHSEG_FIREBASE_BUCKET": s.firebase_bucket,
            "FIREBASE_PROJECT_ID": s.firebase_project,
            "GOOGLE_CLOUD_PROJECT": s.firebase_project,
            "STORAGE_EMULATOR_HOST": self.storage_url,
            "POWERTOOLS_SERVICE_NAME": "ichseg",
            "POWERTOOLS_METRICS_NAMESPACE": "ichseg",
            "POWERTOOLS_TRACE_DISABLED": "true",
            **dict(s.environment),
        }

    def _specs(self) -> list[FunctionSpec]:
        c = self.settings.concurrency
        trust = ("infrastructure.token_issuer:trust_local_certificates", (self.issuer.certificates,))
        return [
            FunctionSpec("api", "functions.api.handler", timeout_seconds=10, concurrency=c["api"]),
            FunctionSpec(
                "authorizer",
                "functions.authorizer.handler",
                timeout_seconds=5,
                concurrency=c["authorizer"],
                setup=trust,
            ),
            FunctionSpec(
                "split", "functions.split.handler", timeout_seconds=300, memory_mb=3008, concurrency=c["split"]
            ),
            FunctionSpec("segment", "functions.segment.handler", timeout_seconds=120, concurrency=c["segment"]),
            FunctionSpec(
                "assemble", "functions.assemble.handler", timeout_seconds=300, memory_mb=3008, concurrency=c["assemble"]
            ),
            FunctionSpec("watchdog", "functions.watchdog.handler", timeout_seconds=60, concurrency=c["watchdog"]),
        ]

    def _start_functions(self) -> None:
        environment = self.environment
        warming: list[Future[str]] = []
        for spec in self._specs():
            self.functions[spec.name] = LocalFunction(spec, environment, str(self.log_dir))
            warming += self.functions[spec.name].warm()
        for future in warming:
            future.result(timeout=300)

    def _start_front(self) -> None:
        from infrastructure.api_front import ApiFront, ServerThread

        front = ApiFront(
            self.functions["authorizer"], self.functions["api"], self.settings.region, mint_token=self.issuer.mint
        )
        self._front = ServerThread(front).start()
        self.api_url = self._front.url

    # ------------------------------------------------------------------ the event pump

    def _spawn(self, target: Any, *args: Any, name: str) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _pump(self, queue_name: str) -> None:
        """Long-poll one queue and invoke its function like Lambda's SQS event source mapping."""
        queue = self.queues[queue_name]
        function = self.functions[QUEUE_FUNCTIONS[queue_name]]
        slots = threading.BoundedSemaphore(function.spec.concurrency)
        sqs = self.aws("sqs")
        while not self._stopping.is_set():
            if not slots.acquire(timeout=0.5):
                continue
            try:
                messages = sqs.receive_message(
                    QueueUrl=queue.url,
                    MaxNumberOfMessages=self.settings.batch_size[queue_name],
                    WaitTimeSeconds=self.settings.poll_wait_seconds,
                    MessageSystemAttributeNames=["All"],
                    MessageAttributeNames=["All"],
                ).get("Messages", [])
            except Exception as exc:  # moto stopping, a transient error: poll again
                slots.release()
                if not self._stopping.is_set():
                    log.warning("receive from %s failed: %s", queue_name, exc)
                    time.sleep(0.5)
                continue
            if not messages:
                slots.release()
                continue
            started = time.time()
            future = function.submit(sqs_event(messages, queue.arn, self.settings.region))
            future.add_done_callback(
                lambda done, m=messages, t=started: self._settle(queue, function.spec.name, m, done, t, slots)
            )

    def _settle(
        self,
        queue: QueueInfo,
        name: str,
        messages: list[dict[str, Any]],
        future: Future[Any],
        started: float,
        slots: threading.BoundedSemaphore,
    ) -> None:
        """Delete what succeeded; leave failures to reappear after the visibility timeout."""
        try:
            try:
                status, response = future.result()
            except Exception as exc:  # the worker process died: like a Lambda crash
                status, response = "error", {"errorType": type(exc).__name__, "errorMessage": str(exc)}
            failed: set[str] = set()
            if status == "ok":
                failed = {f["itemIdentifier"] for f in (response or {}).get("batchItemFailures", [])}
                done = [m for m in messages if m["MessageId"] not in failed]
                if done and not self._stopping.is_set():
                    self._deleter.delete_message_batch(
                        QueueUrl=queue.url,
                        Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)],
                    )
            else:
                failed = {m["MessageId"] for m in messages}
            with self._lock:
                self.invocations.append(
                    Invocation(
                        function=name,
                        bodies=[m["Body"] for m in messages],
                        failed_ids=sorted(failed),
                        error=response if status != "ok" else None,
                        started=started,
                        seconds=time.time() - started,
                        receive_counts=[
                            int(m.get("Attributes", {}).get("ApproximateReceiveCount", 1)) for m in messages
                        ],
                    )
                )
        except Exception:
            log.exception("settling an invocation of %s failed", name)
        finally:
            slots.release()

    def _watchdog_ticks(self) -> None:
        rule = f"arn:aws:events:{self.settings.region}:{ACCOUNT_ID}:rule/ichseg-watchdog"
        while not self._stopping.wait(self.settings.watchdog_interval_seconds):
            self.tick_watchdog(rule)

    def tick_watchdog(self, rule: str = "") -> tuple[str, Any]:
        """Invoke the watchdog now, with the event its schedule would send."""
        rule = rule or f"arn:aws:events:{self.settings.region}:{ACCOUNT_ID}:rule/ichseg-watchdog"
        return self.functions["watchdog"].invoke(scheduled_event(rule, self.settings.region))

    # ------------------------------------------------------------------ for tests, demo, bench

    @property
    def store(self) -> JobStore:
        return JobStore(self.aws("dynamodb"), self.settings.table)

    def token(self, uid: str, **claims: Any) -> str:
        """A Firebase-style ID token for ``uid`` that the stack's authorizer trusts."""
        return self.issuer.mint(uid, **claims)

    def wait_for_job(
        self, job_id: str, timeout: float = 120.0, states: tuple[JobState, ...] = (JobState.DONE, JobState.FAILED)
    ) -> Job:
        """Poll the table until the job reaches one of ``states``."""
        store = self.store
        deadline = time.time() + timeout
        while True:
            job = store.get(job_id)
            if job is not None and job.state in states:
                return job
            if time.time() > deadline:
                raise TimeoutError(f"job {job_id} is {job.state.value if job else 'missing'} after {timeout:.0f} s")
            time.sleep(0.2)

    def invocations_of(self, function: str, containing: str = "") -> list[Invocation]:
        with self._lock:
            return [i for i in self.invocations if i.function == function and any(containing in b for b in i.bodies)]

    def dlq_bodies(self, queue: str) -> list[str]:
        """Messages waiting in a queue's dead-letter queue (left in place: visibility 0)."""
        response = self.aws("sqs").receive_message(
            QueueUrl=self.queues[queue].dlq_url, MaxNumberOfMessages=10, VisibilityTimeout=0, WaitTimeSeconds=0
        )
        return [m["Body"] for m in response.get("Messages", [])]

    def firebase_objects(self, prefix: str) -> list[dict[str, Any]]:
        """Objects in the Firebase Storage emulator under ``prefix`` (its JSON API, as any client sees it)."""
        from urllib.parse import quote

        url = f"{self.storage_url}/storage/v1/b/{self.settings.firebase_bucket}/o?prefix={quote(prefix)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return [
                {"name": item["name"], "size": int(item.get("size", 0)), "content_type": item.get("contentType")}
                for item in json.load(response).get("items", [])
            ]

    def firebase_download(self, name: str) -> bytes:
        from urllib.parse import quote

        url = (
            f"{self.storage_url}/download/storage/v1/b/{self.settings.firebase_bucket}/o/"
            f"{quote(name, safe='')}?alt=media"
        )
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.read()

    def describe(self) -> dict[str, Any]:
        """Addresses and names, as ``ichseg stack`` prints them."""
        return {
            "api": self.api_url,
            "token": f'curl -s -X POST {self.api_url}/_local/token -d \'{{"uid": "alice"}}\'',
            "aws_endpoint_url": self.moto_url,
            "inference_endpoint": self.endpoint_url,
            "firebase_storage_emulator": self.storage_url,
            "bucket": self.settings.bucket,
            "table": self.settings.table,
            "queues": {name: q.url for name, q in self.queues.items()},
            "dead_letter_queues": {name: q.dlq_url for name, q in self.queues.items()},
            "firebase_bucket": self.settings.firebase_bucket,
            "logs": str(self.log_dir),
        }

    @staticmethod
    def _tail(path: Path, lines: int = 20) -> str:
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def stack_command(args: argparse.Namespace) -> int:
    """``ichseg stack``: run the local stack in the foreground until Ctrl-C; print its addresses.

    The model is the shipped one, or ``ICHSEG_MODEL`` (the variable the inference server reads too).
    """
    model = Path(os.environ.get("ICHSEG_MODEL") or SHIPPED_MODEL)
    settings = StackSettings(state_dir=Path(args.state_dir).resolve(), model=model)

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM stops the stack as cleanly as Ctrl-C

    signal.signal(signal.SIGTERM, interrupt)
    print("starting the local stack (moto, storage emulator, inference server, functions)...", flush=True)
    try:
        stack = LocalStack(settings)
        stack.__enter__()
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        description = stack.describe()
        print(json.dumps(description, indent=2))
        print("\nThe functions' environment (point the AWS CLI or boto3 at moto with these):")
        for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
            print(f"  export {name}={stack.environment[name]}")
        print(
            f"\nTry: TOKEN=$({description['token']} | python3 -c 'import json,sys; print(json.load(sys.stdin)"
            '["id_token"])\')'
        )
        print(
            f'     curl -s -H "Authorization: Bearer $TOKEN" -d \'{{"content_type": "video/mp4"}}\' '
            f"{stack.api_url}/v1/scans"
        )
        print("\nCtrl-C stops everything.", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
        return 0
    finally:
        stack.__exit__(None, None, None)
