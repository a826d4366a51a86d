"""The local stack: the whole cloud shape on one machine, with real protocol peers.

    with LocalStack() as stack:          # or `ichseg stack` in the foreground
        stack.api_url, stack.token("alice"), stack.inspect.wait_for_job(job_id) ...

This module lays the stack out and starts it in order; the parts are rooms of their own: the
services (:mod:`infrastructure.local_services`), the event pump (:mod:`infrastructure.event_pump`)
and what tests read of it (:attr:`LocalStack.inspect`, :mod:`infrastructure.stack_inspector`).

What runs (all on 127.0.0.1, free ports):

- moto's server (:mod:`infrastructure.moto_server`) with the resources ``template.yaml`` declares,
  read by :mod:`infrastructure.cloud_template`: the bucket (its S3 -> SQS notifications, lifecycle
  rules, versioning), the queues with their dead-letter queues, retention and redrive, the jobs
  table with its keys, index and TTL;
- gcp-storage-emulator: Firebase Storage (the mirror's bucket), and the inference server, ``ichseg
  endpoint`` (gunicorn + ONNX Runtime) with the model, reached by boto3's ``sagemaker-runtime`` client
  through ``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME`` (:mod:`infrastructure.local_services`);
- the template's functions, each in its own worker process(es) (:mod:`infrastructure.lambda_runtime`)
  with the template's handler, timeout, memory and environment (Globals + its own);
- the event pump (:mod:`infrastructure.event_pump`): an SQS poller per event source, as Lambda's
  event source mapping, and the watchdog's schedule;
- the API front (:mod:`infrastructure.api_front`) with a locally
  trusted Firebase token issuer (:mod:`infrastructure.token_issuer`);
- with ``pacs`` or ``gateway`` set, the DICOM gateway (:class:`gateway.service.GatewayService`) in
  this process, configured by the template's task definition (``GatewayTaskDefinition``'s container
  environment) with local addresses: it takes ``DeliveryQueue``, which no pump reads, as in the cloud.

A change in template.yaml changes the local stack; ``tests/infrastructure/test_local_stack.py`` compares
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
import sys
import time
from collections.abc import Mapping
from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ichseg.background_server import BackgroundServer
from ichseg.paths import REPO_ROOT, SHIPPED_MODEL
from infrastructure.cloud_template import TEMPLATE, CloudTemplate, TemplateError
from infrastructure.event_pump import EventPump, PumpSettings, QueueInfo
from infrastructure.lambda_runtime import ACCOUNT_ID, FunctionSpec, LocalFunction
from infrastructure.local_services import InferenceServer, StackError, StorageEmulator
from infrastructure.stack_inspector import StackInspector
from infrastructure.token_issuer import LocalTokenIssuer

if TYPE_CHECKING:
    from gateway.service import GatewayService

log = logging.getLogger("ichseg.local_stack")

FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
LOCAL_ONLY_SETUP = {"authorizer": ("infrastructure.token_issuer:trust_local_certificates",)}
"""Run in a function's workers before its handler: the authorizer trusts the local token issuer."""


GATEWAY_TASK_DEFINITION, GATEWAY_CONTAINER = "GatewayTaskDefinition", "gateway"
"""Where template.yaml declares the gateway's configuration (its container's environment)."""


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
            # One more worker than the server runs at once: while one renders its batch and
            # writes it, the next request is already waiting at the endpoint (bench/pipeline_bench.py).
            "segment": 3,
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
    """``AE@HOST:PORT`` (options as the gateway's destinations: ``?overlay``, ``?tls``): start the DICOM
    gateway with this PACS as the default destination of results."""
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
        s = self.settings = replace(settings or StackSettings(), **overrides)
        self.template = CloudTemplate.load(s.template, s.parameters())
        self.issuer = LocalTokenIssuer(s.firebase_project)
        self.functions: dict[str, LocalFunction] = {}
        self.queues: dict[str, QueueInfo] = {}
        self._running = ExitStack()
        """Every started part's stop, run in reverse order by :meth:`stop`."""
        self.endpoint = InferenceServer(Path(s.model), s.endpoint_workers, Path(s.state_dir), self.log_dir)
        self.storage = StorageEmulator(s.firebase_bucket)
        self.pump = EventPump(
            PumpSettings(s.region, s.poll_wait_seconds, s.duplicate_deliveries, s.watchdog_interval_seconds),
            lambda: self.aws("sqs"),
        )
        self.inspect = StackInspector(
            self.aws, s.table, self.queues, self.pump, lambda: self.storage.url, s.firebase_bucket
        )
        """Reads for tests, the demo and the benchmarks (jobs, dead letters, Firebase objects, invocations)."""
        self.moto_url = self.api_url = ""
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
        self.endpoint.launch()  # slowest to come up (ONNX Runtime session + warm-up): first
        self._running.callback(self.endpoint.stop)
        self._start_moto()
        try:
            self._create_aws_resources()
        except TemplateError as exc:
            raise StackError(f"template.yaml: {exc}") from exc
        self.storage.start()
        self._running.callback(self.storage.stop)
        self.endpoint.learn_url()  # the functions' environment carries it
        self._start_functions()
        self.endpoint.wait_ready()
        self._start_front()
        self.pump.start(self.template, self.queues, self.functions)
        self._running.callback(self.pump.stop)  # the pump stops first: it feeds the functions
        if self.settings.pacs or self.settings.gateway:
            self.start_gateway()

    def stop(self) -> None:
        """Stop everything that started, in reverse order (also after a failed start)."""
        self._running.close()

    @property
    def log_dir(self) -> Path:
        return Path(self.settings.state_dir) / "logs"

    @property
    def endpoint_url(self) -> str:
        """The inference server's address (boto3's ``sagemaker-runtime`` endpoint URL)."""
        return self.endpoint.url

    @property
    def storage_url(self) -> str:
        """The Firebase Storage emulator's address (``STORAGE_EMULATOR_HOST``)."""
        return self.storage.url

    # ------------------------------------------------------------------ AWS (moto)

    def _start_moto(self) -> None:
        from infrastructure.moto_server import MotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        moto = MotoServer().start()
        self._running.callback(moto.stop)
        self.moto_url = moto.url

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

    # ------------------------------------------------------------------ the functions

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

    def _start_front(self) -> None:
        from werkzeug.serving import make_server

        from infrastructure.api_front import ApiFront

        front = ApiFront(
            self.functions["authorizer"], self.functions["api"], self.settings.region, mint_token=self.issuer.mint
        )
        server = BackgroundServer(make_server("127.0.0.1", 0, front, threaded=True), "ichseg-api-front").start()
        self._running.callback(server.stop)
        self.api_url = "http://{}:{}".format(*server.address)

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
            "ICHSEG_GATEWAY_STATUS_HOST": "127.0.0.1",
            "ICHSEG_GATEWAY_STATUS_PORT": "0",  # any free port: describe() says which
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

    # ------------------------------------------------------------------ for tests, demo, bench

    def token(self, uid: str, **claims: Any) -> str:
        """A Firebase-style ID token for ``uid`` that the stack's authorizer trusts."""
        return self.issuer.mint(uid, **claims)

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
        status = gateway.status.address if gateway.status is not None else None
        return {
            "ae_title": gateway.settings.ae_title,
            "host": host,
            "port": port,
            "destination": None if destination is None else str(destination),
            "status_url": f"http://{status[0]}:{status[1]}/" if status else None,
        }


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
