"""The local stack: the whole cloud shape on one machine, with real protocol peers.

    with LocalStack() as stack:          # or `ichseg stack` in the foreground
        stack.api_url, stack.token("alice"), stack.wait_for_job(job_id) ...

What runs (all on 127.0.0.1, free ports):

- moto's server (:mod:`infrastructure.moto_server`) with the resources ``template.yaml`` declares,
  read by :mod:`infrastructure.cloud_template`: the bucket (its S3 -> SQS notifications, lifecycle
  rules, versioning), the queues with their dead-letter queues, retention and redrive, the jobs
  table with its keys, index and TTL;
- gcp-storage-emulator: Firebase Storage (the mirror's bucket);
- the inference server, ``ichseg endpoint`` (gunicorn + ONNX Runtime) with the model, reached by
  boto3's ``sagemaker-runtime`` client through ``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME``;
- the template's functions, each in its own worker process(es) (:mod:`infrastructure.lambda_runtime`)
  with the template's handler, timeout, memory and environment (Globals + its own);
- an event pump per SQS event source: long-polls with the template's batch size, passes Lambda's SQS
  event JSON to the function, deletes what succeeded and honours ``batchItemFailures`` (what
  Lambda's event source mapping does), leaving a failed message to come back when its visibility
  timeout ends (the mirror function sets its own, a backoff per receive, as it does in the cloud);
- the watchdog's schedule and the API front (:mod:`infrastructure.api_front`) with a locally
  trusted Firebase token issuer (:mod:`infrastructure.token_issuer`);
- with ``pacs`` or ``gateway`` set, the DICOM gateway (:class:`gateway.service.GatewayService`) in
  this process, configured by the template's task definition (``GatewayTaskDefinition``'s container
  environment) with local addresses: it takes ``DeliveryQueue``, which no pump reads, as in the cloud.

A change in template.yaml changes the local stack; ``tests/pipeline/test_local_stack.py`` compares
the running stack with the template. What is local on purpose: addresses and credentials, the
physical names, per-function concurrency (two cores), the overrides tests pass in
:class:`StackSettings` (shorter visibility timeouts so a retry takes seconds), and what protects
the data at rest and its audit trail in AWS: the template's KMS key (bucket, queues, table, logs,
topic and environment are not KMS-encrypted in moto), the bucket's access logging and the Lambda
dead-letter queue of the watchdog (the bucket's versioning is local).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ichseg.paths import REPO_ROOT, SHIPPED_MODEL
from ichseg.pipeline.jobs import Job, JobState, JobStore
from infrastructure.cloud_template import TEMPLATE, CloudTemplate, TemplateError
from infrastructure.lambda_runtime import (
    ACCOUNT_ID,
    FunctionSpec,
    LocalFunction,
    scheduled_event,
    sqs_event,
)
from infrastructure.token_issuer import LocalTokenIssuer

if TYPE_CHECKING:
    from gateway.service import GatewayService

log = logging.getLogger("ichseg.local_stack")

FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
LOCAL_ONLY_SETUP = {"authorizer": ("infrastructure.token_issuer:trust_local_certificates",)}
"""Run in a function's workers before its handler: the authorizer trusts the local token issuer."""


GATEWAY_TASK_DEFINITION, GATEWAY_CONTAINER = "GatewayTaskDefinition", "gateway"
"""Where template.yaml declares the gateway's configuration (its container's environment)."""


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
    template: Path = TEMPLATE
    """The SAM template the stack is built from."""
    visibility_timeout: Mapping[str, int] = field(default_factory=dict)
    """Overrides of the template's visibility timeouts by queue (``{"segment": 4}``): tests retry in seconds."""
    concurrency: Mapping[str, int] = field(
        default_factory=lambda: {
            "api": 2,
            "authorizer": 1,
            "split": 1,
            "segment": 2,
            "assemble": 1,
            "mirror": 1,
            "watchdog": 1,
        }
    )
    """Worker processes per function (Lambda scales out; two cores do not)."""
    watchdog_interval_seconds: float | None = None
    """Override of the watchdog's schedule (None: the template's rate)."""
    duplicate_deliveries: bool = False
    """Chaos: every message a pump receives is sent to its queue once more (SQS's at-least-once,
    made certain), for the fault benchmark."""
    poll_wait_seconds: int = 1
    endpoint_workers: int = 1
    environment: Mapping[str, str] = field(default_factory=dict)
    """Extra variables for every function and the gateway (e.g. ``ICHSEG_JOB_DEADLINE_SECONDS``)."""
    pacs: str | None = None
    """``AE@HOST:PORT``: start the DICOM gateway with this PACS as the default destination of results."""
    gateway: bool = False
    """Start the DICOM gateway even without a PACS (it receives and uploads; results stay in S3)."""
    gateway_idle_seconds: float = 10.0
    """A series nobody sent an instance of for this long is complete (tests: about a second)."""
    gateway_ae_title: str = "ICHSEG"
    gateway_port: int = 0
    """The gateway's DICOM port; 0: any free one (``GatewayService.address`` says which)."""

    def parameters(self) -> dict[str, str]:
        """The template parameters of this local deployment (the others keep their defaults)."""
        return {
            "EndpointMode": "existing",  # boto3's sagemaker-runtime client, pointed at the local server
            "ExistingEndpointName": self.endpoint_name,
            "FirebaseProjectId": self.firebase_project,
            "FirebaseStorageBucket": self.firebase_bucket,
        }


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


class _MotoSession:
    """What :class:`gateway.service.GatewayService` needs of a boto3 session: clients, here the
    stack's own (moto's address, fake credentials), so the process environment is left alone."""

    def __init__(self, stack: LocalStack) -> None:
        self._stack = stack

    def client(self, service: str) -> Any:
        return self._stack.aws(service)


class LocalStack:
    """Starts everything in :meth:`start` (or ``with``), stops it in :meth:`stop`."""

    def __init__(self, settings: StackSettings | None = None, **overrides: Any) -> None:
        self.settings = replace(settings or StackSettings(), **overrides)
        self.template = CloudTemplate.load(self.settings.template, self.settings.parameters())
        self.issuer = LocalTokenIssuer(self.settings.firebase_project)
        self.invocations: list[Invocation] = []
        self.functions: dict[str, LocalFunction] = {}
        self.queues: dict[str, QueueInfo] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running = ExitStack()
        """Every started part's stop, run in reverse order by :meth:`stop`."""
        self._endpoint: subprocess.Popen[bytes] | None = None
        self._storage: Any = None
        self.moto_url = self.storage_url = self.endpoint_url = self.api_url = ""
        self.gateway: GatewayService | None = None
        self._gateway_log: Any = None

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
        self._running.callback(self._stop_endpoint)
        self._start_moto()
        try:
            self._create_aws_resources()
        except TemplateError as exc:
            raise StackError(f"template.yaml: {exc}") from exc
        self._start_storage_emulator()
        self._running.callback(self._stop_storage_emulator)
        self._learn_endpoint_url()  # the functions' environment carries it
        self._start_functions()
        self._wait_for_endpoint()
        self._start_front()
        for function in self.template.functions.values():
            if function.sqs is not None:
                self._spawn(self._pump, function.sqs.queue, function.name, name=f"ichseg-pump-{function.sqs.queue}")
        self._spawn(self._watchdog_ticks, name="ichseg-watchdog")
        if self.settings.pacs or self.settings.gateway:
            self.start_gateway()

    def stop(self) -> None:
        """Stop everything that started, in reverse order (also after a failed start)."""
        self._running.close()

    def _stop_threads(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=self.settings.poll_wait_seconds + 5)

    @property
    def log_dir(self) -> Path:
        return Path(self.settings.state_dir) / "logs"

    # ------------------------------------------------------------------ services

    def _start_endpoint(self) -> None:
        """Start the inference server on port 0: a port probed free and bound seconds later by the
        server can be taken in between. :meth:`_learn_endpoint_url` reads back the port it bound."""
        self._launch_endpoint(0)

    @property
    def _endpoint_port_file(self) -> Path:
        return Path(self.settings.state_dir) / "endpoint.port"

    def _launch_endpoint(self, port: int) -> None:
        """Start ``ichseg endpoint`` on ``port``; it writes the port it bound to :attr:`_endpoint_port_file`."""
        port_file = self._endpoint_port_file
        port_file.unlink(missing_ok=True)
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
        from serving.server import PORT_FILE_ENV

        environment = {**os.environ, PORT_FILE_ENV: str(port_file)}
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / "endpoint.log", "ab") as output:
            self._endpoint = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=environment
            )

    def _bound_endpoint_port(self, timeout: float = 120.0) -> int | None:
        """The port the inference server bound, once it has; None if it exited without binding."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            exited = self._endpoint is None or self._endpoint.poll() is not None
            if self._endpoint_port_file.exists():  # written atomically, after the bind
                return int(self._endpoint_port_file.read_text())
            if exited:
                return None
            time.sleep(0.1)
        raise StackError(f"the inference server did not bind its port in {timeout:.0f} s")

    def _learn_endpoint_url(self) -> None:
        """Set :attr:`endpoint_url` from the port the server started by :meth:`_start_endpoint` bound."""
        port = self._bound_endpoint_port()
        if port is None:
            raise StackError(
                f"the inference server exited; see {self.log_dir / 'endpoint.log'}:\n"
                + self._tail(self.log_dir / "endpoint.log")
            )
        self.endpoint_url = f"http://127.0.0.1:{port}"

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
            self._restart_endpoint()

    def _restart_endpoint(self, bind_timeout: float = 60.0) -> None:
        """Start the inference server again on its old port: the functions' environment names it.

        gunicorn binds with SO_REUSEADDR and retries for about 5 s itself; if the port is still
        taken (another process bound it while the server was down), relaunch until ``bind_timeout``.
        """
        port = int(self.endpoint_url.rsplit(":", 1)[1])
        deadline = time.monotonic() + bind_timeout
        while True:
            self._launch_endpoint(port)
            if self._bound_endpoint_port() is not None:
                break
            if time.monotonic() >= deadline:
                raise StackError(
                    f"the inference server could not bind port {port} again in {bind_timeout:.0f} s:\n"
                    + self._tail(self.log_dir / "endpoint.log")
                )
            time.sleep(1.0)
        self._wait_for_endpoint()

    def _start_moto(self) -> None:
        from infrastructure.moto_server import MotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        moto = MotoServer().start()
        self._running.callback(moto.stop)
        self.moto_url = moto.url
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
        """Create the template's bucket, queues and table in moto (names are local)."""
        s, template = self.settings, self.template
        s3, sqs, dynamodb = self.aws("s3"), self.aws("sqs"), self.aws("dynamodb")
        s3.create_bucket(Bucket=s.bucket)
        if template.bucket_versioning is not None:
            s3.put_bucket_versioning(Bucket=s.bucket, VersioningConfiguration={"Status": template.bucket_versioning})
        s3.put_bucket_lifecycle_configuration(
            Bucket=s.bucket, LifecycleConfiguration={"Rules": template.lifecycle_rules()}
        )
        for queue in template.queues.values():
            dlq_url = sqs.create_queue(
                QueueName=f"ichseg-{queue.name}-dlq",
                Attributes={"MessageRetentionPeriod": str(queue.dead_letter_retention_seconds)},
            )["QueueUrl"]
            dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            redrive = {"maxReceiveCount": queue.max_receive_count, "deadLetterTargetArn": dlq_arn}
            url = sqs.create_queue(
                QueueName=f"ichseg-{queue.name}",
                Attributes={
                    "VisibilityTimeout": str(s.visibility_timeout.get(queue.name, queue.visibility_timeout)),
                    "MessageRetentionPeriod": str(queue.retention_seconds),
                    "RedrivePolicy": json.dumps(redrive),
                },
            )["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            self.queues[queue.name] = QueueInfo(queue.name, url, arn, dlq_url)
        table = template.table
        dynamodb.create_table(
            TableName=s.table,
            **{k: table[k] for k in ("BillingMode", "AttributeDefinitions", "KeySchema", "GlobalSecondaryIndexes")},
        )
        if "TimeToLiveSpecification" in table:
            dynamodb.update_time_to_live(TableName=s.table, TimeToLiveSpecification=table["TimeToLiveSpecification"])
        s3.put_bucket_notification_configuration(
            Bucket=s.bucket,
            NotificationConfiguration={
                "QueueConfigurations": [
                    {
                        "Id": f"{n.prefix.rstrip('/')}-to-{n.queue}",
                        "QueueArn": self.queues[n.queue].arn,
                        "Events": list(n.events),
                        "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": n.prefix}]}},
                    }
                    for n in template.bucket_notifications
                ]
            },
        )

    def resolve_resource(self, logical_id: str, attribute: str | None) -> str:
        """A template resource's local value: ``Ref`` (attribute None) or ``Fn::GetAtt``."""
        if logical_id in ("AWS::Region", "AWS::AccountId") and attribute is None:
            return self.settings.region if logical_id == "AWS::Region" else ACCOUNT_ID
        if logical_id == "DataBucket" and attribute is None:
            return self.settings.bucket
        if logical_id == "JobsTable" and attribute is None:
            return self.settings.table
        queue = self.template.queue_by_logical_id(logical_id)
        info = self.queues[queue.name]
        if logical_id == queue.logical_id and attribute in (None, "Arn", "QueueName"):
            return {None: info.url, "Arn": info.arn, "QueueName": f"ichseg-{queue.name}"}[attribute]
        raise TemplateError(f"no local value for {logical_id}{'.' + attribute if attribute else ''}")

    def _start_storage_emulator(self, port: int = 0, bind_timeout: float = 30.0) -> None:
        """Start the Firebase Storage emulator on ``port`` and set :attr:`storage_url`.

        Port 0 (the first start) binds any free port and reads it back: no probed port that someone
        else can take before the bind. A fixed port (the restart after :meth:`storage_down`) may be
        briefly taken: its bind is retried until ``bind_timeout``.
        """
        from gcp_storage_emulator.server import create_server

        logging.getLogger("gcp_storage_emulator").setLevel(logging.WARNING)
        deadline = time.monotonic() + bind_timeout
        while True:
            storage = create_server("127.0.0.1", port, in_memory=True, default_bucket=self.settings.firebase_bucket)
            # Not storage.start(): it waits forever for a server thread whose bind failed. The
            # thread sets is_running once its HTTPServer is bound; it dies when the bind fails.
            api = storage._api
            api.start()
            while not api.is_running.wait(0.05) and api.is_alive():
                pass
            if api.is_running.is_set():
                break
            if time.monotonic() >= deadline:
                raise StackError(f"the Firebase Storage emulator could not bind port {port} in {bind_timeout:.0f} s")
            time.sleep(0.5)
        self._storage = storage
        self.storage_url = f"http://127.0.0.1:{api._httpd.server_port}"

    def _stop_storage_emulator(self) -> None:
        if self._storage is not None:
            self._storage.stop()
            self._storage = None

    @contextmanager
    def storage_down(self) -> Iterator[None]:
        """Stop the Firebase Storage emulator for the block (a Firebase outage), then start it again,
        empty, on the same address."""
        port = int(self.storage_url.rsplit(":", 1)[1])
        self._stop_storage_emulator()
        try:
            yield
        finally:
            self._start_storage_emulator(port)  # the same port: the functions' environment names it

    @property
    def environment(self) -> dict[str, str]:
        """What every local function sees besides the template's variables: local addresses, fake
        credentials, and :attr:`StackSettings.environment`."""
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
            "GOOGLE_CLOUD_PROJECT": s.firebase_project,
            "STORAGE_EMULATOR_HOST": self.storage_url,
            "POWERTOOLS_TRACE_DISABLED": "true",  # no X-Ray daemon here
            **dict(s.environment),
        }

    def function_environment(self, name: str) -> dict[str, str]:
        """One function's environment: the template's (Globals + its own, evaluated) over the local one."""
        return {
            **self.environment,
            **self.template.function_environment(name, self.resolve_resource),
            **dict(self.settings.environment),
        }

    def _specs(self) -> list[FunctionSpec]:
        concurrency = self.settings.concurrency
        specs = []
        for function in self.template.functions.values():
            setup = LOCAL_ONLY_SETUP.get(function.name)
            specs.append(
                FunctionSpec(
                    function.name,
                    function.handler,
                    timeout_seconds=function.timeout_seconds,
                    memory_mb=function.memory_mb,
                    concurrency=concurrency.get(function.name, 1),
                    setup=(setup[0], (self.issuer.certificates,)) if setup else None,
                )
            )
        return specs

    def _start_functions(self) -> None:
        warming: list[Future[str]] = []
        for spec in self._specs():
            function = LocalFunction(spec, self.function_environment(spec.name), str(self.log_dir))
            self.functions[spec.name] = function
            self._running.callback(function.close)
            warming += function.warm()
        for future in warming:
            future.result(timeout=300)
        self._running.callback(self._stop_threads)  # pumps stop first: they feed the functions

    def _start_front(self) -> None:
        from infrastructure.api_front import ApiFront, ServerThread

        front = ApiFront(
            self.functions["authorizer"], self.functions["api"], self.settings.region, mint_token=self.issuer.mint
        )
        server = ServerThread(front).start()
        self._running.callback(server.stop)
        self.api_url = server.url

    # ------------------------------------------------------------------ the DICOM gateway

    def gateway_environment(self) -> dict[str, str]:
        """The gateway's variables: the template's container environment (bucket, table, delivery
        queue, AE title, receive count) with local addresses, the spool under the state dir, and
        :attr:`StackSettings.environment` over them."""
        s = self.settings
        return {
            **self.template.container_environment(GATEWAY_TASK_DEFINITION, GATEWAY_CONTAINER, self.resolve_resource),
            "ICHSEG_GATEWAY_AE_TITLE": s.gateway_ae_title,
            "ICHSEG_GATEWAY_HOST": "127.0.0.1",
            "ICHSEG_GATEWAY_PORT": str(s.gateway_port),
            "ICHSEG_GATEWAY_SPOOL_DIR": str(Path(s.state_dir) / "gateway-spool"),
            "ICHSEG_GATEWAY_IDLE_SECONDS": str(s.gateway_idle_seconds),
            "ICHSEG_GATEWAY_DEFAULT_DESTINATION": s.pacs or "",
            "ICHSEG_GATEWAY_POLL_SECONDS": str(s.poll_wait_seconds),  # stops within a poll
            **dict(s.environment),
        }

    def start_gateway(self) -> GatewayService:
        """Start the DICOM gateway in this process (``start`` does when ``pacs`` or ``gateway`` is
        set); it stops with the stack, or with :meth:`stop_gateway`."""
        from gateway.service import GatewayService
        from gateway.settings import GatewaySettings, SettingsError

        if self.gateway is not None:
            return self.gateway
        try:
            settings = GatewaySettings.from_env(self.gateway_environment())
        except SettingsError as exc:
            raise StackError(f"DICOM gateway: {exc}") from exc
        gateway = GatewayService(settings, session=_MotoSession(self))
        self._log_gateway_to(self.log_dir / "gateway.log")
        try:
            gateway.start()
        except OSError as exc:
            raise StackError(f"the DICOM gateway cannot listen: {exc}") from exc
        self._running.callback(self.stop_gateway)
        self.gateway = gateway
        return gateway

    def _log_gateway_to(self, path: Path) -> None:
        """The in-process gateway's log lines (associations, spooling, uploads, deliveries) go to
        ``path`` beside the functions' logs, for as long as the stack runs."""
        if self._gateway_log is not None:  # a restarted gateway keeps writing to the same file
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = self._gateway_log = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger = logging.getLogger("gateway")
        logger.addHandler(handler)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)

        def close() -> None:
            logger.removeHandler(handler)
            handler.close()
            self._gateway_log = None

        self._running.callback(close)

    def stop_gateway(self) -> None:
        """Stop the DICOM gateway if it runs (its spool stays for the next start)."""
        if self.gateway is not None:
            self.gateway.stop()
            self.gateway = None

    # ------------------------------------------------------------------ the event pump

    def _spawn(self, target: Any, *args: Any, name: str) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _pump(self, queue_name: str, function_name: str) -> None:
        """Long-poll one queue and invoke its function like Lambda's SQS event source mapping."""
        queue = self.queues[queue_name]
        function = self.functions[function_name]
        source = self.template.functions[function_name].sqs
        assert source is not None
        slots = threading.BoundedSemaphore(function.spec.concurrency)
        sqs = self.aws("sqs")
        while not self._stopping.is_set():
            if not slots.acquire(timeout=0.5):
                continue
            try:
                messages = sqs.receive_message(
                    QueueUrl=queue.url,
                    MaxNumberOfMessages=source.batch_size,
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
            if self.settings.duplicate_deliveries:
                self._duplicate(sqs, queue, messages)
            started = time.time()
            try:
                future = function.submit(sqs_event(messages, queue.arn, self.settings.region))
            except Exception:  # not even a fresh worker starts: the messages come back after their timeout
                log.exception("could not invoke %s", function_name)
                slots.release()
                time.sleep(0.5)
                continue
            future.add_done_callback(
                lambda done, m=messages, t=started: self._settle(queue, function.spec.name, m, done, t, slots)
            )

    @staticmethod
    def _duplicate(sqs: Any, queue: QueueInfo, messages: list[dict[str, Any]]) -> None:
        """Send a copy of each original (not already duplicated) message to its queue."""
        for message in messages:
            if "ichseg-duplicate" not in message.get("MessageAttributes", {}):
                sqs.send_message(
                    QueueUrl=queue.url,
                    MessageBody=message["Body"],
                    MessageAttributes={"ichseg-duplicate": {"DataType": "String", "StringValue": "1"}},
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
        interval = self.settings.watchdog_interval_seconds or self.template.functions["watchdog"].schedule_seconds
        while not self._stopping.wait(interval or 300.0):
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
            **({"dicom_gateway": self._describe_gateway(self.gateway)} if self.gateway is not None else {}),
        }

    @staticmethod
    def _describe_gateway(gateway: GatewayService) -> dict[str, Any]:
        host, port = gateway.address
        destination = gateway.settings.default_destination
        return {
            "ae_title": gateway.settings.ae_title,
            "host": host,
            "port": port,
            "destination": None if destination is None else str(destination),
        }

    @staticmethod
    def _tail(path: Path, lines: int = 20) -> str:
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def try_commands(stack: LocalStack) -> tuple[str, str]:
    """The two shell lines ``ichseg stack`` suggests: get a token, start a scan (a test runs them)."""
    token = stack.describe()["token"]
    return (
        f"TOKEN=$({token} | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"id_token\"])')",
        f'curl -s -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" '
        f'-d \'{{"content_type": "video/mp4"}}\' {stack.api_url}/v1/scans',
    )


def stack_command(args: argparse.Namespace) -> int:
    """``ichseg stack``: run the local stack in the foreground until Ctrl-C; print its addresses.

    The model is the shipped one, or ``ICHSEG_MODEL`` (the variable the inference server reads too).
    """
    model = Path(os.environ.get("ICHSEG_MODEL") or SHIPPED_MODEL)
    pacs = getattr(args, "pacs", None)
    if pacs:
        from gateway.settings import Destination, SettingsError

        try:
            Destination.parse(pacs)
        except SettingsError as exc:
            print(f"error: --pacs: {exc}", file=sys.stderr)
            return 2
    settings = StackSettings(
        state_dir=Path(args.state_dir).resolve(),
        model=model,
        pacs=pacs or None,
        gateway=bool(getattr(args, "gateway", False)) or bool(getattr(args, "gateway_port", 0)),
        gateway_port=int(getattr(args, "gateway_port", 0) or 0),
    )

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
        token, start = try_commands(stack)
        print(f"\nTry: {token}\n     {start}")
        if "dicom_gateway" in description:
            gw = description["dicom_gateway"]
            print(f"\nDICOM: echoscu -aet TEST -aec {gw['ae_title']} {gw['host']} {gw['port']}")
            print(f"       storescu -aet SITE -aec {gw['ae_title']} {gw['host']} {gw['port']} +sd <a CT series folder>")
        print("\nCtrl-C stops everything.", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
        return 0
    finally:
        stack.__exit__(None, None, None)
