"""template.yaml, read as the local stack needs it: the one source of truth for the cloud resources.

The local stack (:mod:`infrastructure.local_stack`) builds its queues, dead-letter queues, jobs
table, bucket notifications and lifecycle, and each function's handler, environment, timeout,
memory and event source from what this module reads out of ``template.yaml``, so a change in the
template changes the local stack. Only addresses (moto, the storage emulator, the inference server)
and what the local machine cannot do the same way are local; :data:`LOCAL_PARAMETERS` names the
parameter values a local deployment uses.

CloudFormation's intrinsic functions are evaluated for the subset the template uses where it
matters locally (``Ref``, ``Fn::If``, ``Fn::Join``, conditions, ``Fn::GetAtt`` of queue ARNs); a resource the
local stack has no counterpart for resolves through the caller's ``resolve_resource``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from ichseg.paths import REPO_ROOT

TEMPLATE = REPO_ROOT / "template.yaml"

LOCAL_PARAMETERS: Mapping[str, str] = {
    # The local inference server is reached through boto3's sagemaker-runtime client (its endpoint
    # URL points at the server), exactly as a SageMaker endpoint is in the cloud.
    "EndpointMode": "existing",
    "ExistingEndpointName": "ichseg-local",
    "FirebaseProjectId": "ichseg-local",
    "FirebaseStorageBucket": "ichseg-local.appspot.com",
}
"""Parameter values of a local deployment (the rest keep the template's defaults)."""

NO_VALUE = object()
"""``AWS::NoValue``: the property or variable is absent."""


class TemplateError(ValueError):
    """template.yaml lacks something the local stack needs, or uses an intrinsic it cannot evaluate."""


class _CloudFormationLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (``!Ref X`` -> ``{"Ref": "X"}``, ``!If`` -> ``Fn::If``...)."""


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix in ("Ref", "Condition"):  # the two intrinsics whose long form has no "Fn::"
        return {suffix: value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_CloudFormationLoader.add_multi_constructor("!", _tag)


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    """The template as plain data, intrinsic functions in their long form."""
    with open(path) as handle:
        document = yaml.load(handle, Loader=_CloudFormationLoader)  # a SafeLoader subclass: no arbitrary objects
    if not isinstance(document, dict) or "Resources" not in document:
        raise TemplateError(f"{path} is not a CloudFormation template")
    return document


@dataclass(frozen=True)
class QueueDefinition:
    """An SQS queue with its dead-letter queue."""

    logical_id: str
    name: str
    """Short name: ``IngestQueue`` -> ``ingest``."""
    visibility_timeout: int
    retention_seconds: int
    dead_letter_logical_id: str
    dead_letter_retention_seconds: int
    max_receive_count: int


@dataclass(frozen=True)
class SqsSource:
    """A function's SQS event source mapping."""

    queue: str
    """The queue's short name."""
    batch_size: int
    report_batch_item_failures: bool
    maximum_concurrency: int | None


@dataclass(frozen=True)
class FunctionDefinition:
    """A Lambda function as the template declares it."""

    logical_id: str
    name: str
    """Short name: ``SplitFunction`` -> ``split``."""
    handler: str
    """Module path and function, e.g. ``functions.split.handler`` (the image's ``functions/split.handler``)."""
    memory_mb: int
    timeout_seconds: int
    environment: Mapping[str, Any]
    """Globals' variables overlaid with the function's own, intrinsics unevaluated."""
    sqs: SqsSource | None = None
    schedule_seconds: float | None = None
    """From a ``Schedule`` event's ``rate(...)`` expression."""


@dataclass(frozen=True)
class BucketNotification:
    prefix: str
    queue: str
    events: tuple[str, ...]


@dataclass
class CloudTemplate:
    """What the local stack reads from template.yaml, with the local parameter values applied."""

    document: dict[str, Any]
    parameters: Mapping[str, str] = field(default_factory=lambda: dict(LOCAL_PARAMETERS))

    @classmethod
    def load(cls, path: Path = TEMPLATE, parameters: Mapping[str, str] | None = None) -> CloudTemplate:
        return cls(load_template(path), dict(LOCAL_PARAMETERS if parameters is None else parameters))

    # ------------------------------------------------------------------ raw access

    @property
    def resources(self) -> dict[str, Any]:
        return dict(self.document["Resources"])

    def _of_type(self, kind: str) -> dict[str, dict[str, Any]]:
        return {name: r for name, r in self.resources.items() if r.get("Type") == kind}

    def properties(self, logical_id: str) -> dict[str, Any]:
        try:
            return dict(self.resources[logical_id].get("Properties", {}))
        except KeyError:
            raise TemplateError(f"template.yaml has no resource {logical_id}") from None

    # ------------------------------------------------------------------ parameters and intrinsics

    def parameter(self, name: str) -> str:
        """A parameter's local value: :data:`LOCAL_PARAMETERS`, else the template's default."""
        declared = self.document.get("Parameters", {}).get(name)
        if declared is None:
            raise TemplateError(f"template.yaml has no parameter {name}")
        if name in self.parameters:
            return str(self.parameters[name])
        if "Default" not in declared:
            raise TemplateError(f"parameter {name} has no default; give it a local value in LOCAL_PARAMETERS")
        default = declared["Default"]
        return ",".join(default) if isinstance(default, list) else str(default)

    @cached_property
    def conditions(self) -> dict[str, bool]:
        declared = self.document.get("Conditions", {})
        evaluated: dict[str, bool] = {}

        def condition(name: str) -> bool:
            if name not in evaluated:
                evaluated[name] = bool(self.evaluate(declared[name], condition=condition))
            return evaluated[name]

        return {name: condition(name) for name in declared}

    def evaluate(
        self,
        value: Any,
        resolve_resource: Callable[[str, str | None], Any] | None = None,
        condition: Callable[[str], bool] | None = None,
    ) -> Any:
        """Evaluate intrinsic functions. ``resolve_resource(logical_id, attribute)`` answers a
        ``Ref`` (attribute None) or ``Fn::GetAtt`` of a resource; :data:`NO_VALUE` marks an absence."""
        condition = condition or (lambda name: self.conditions[name])

        def walk(node: Any) -> Any:
            if isinstance(node, list):
                return [v for v in (walk(item) for item in node) if v is not NO_VALUE]
            if not isinstance(node, dict):
                return node
            if len(node) == 1:
                ((key, argument),) = node.items()
                if key == "Ref":
                    if argument == "AWS::NoValue":
                        return NO_VALUE
                    if argument in self.document.get("Parameters", {}):
                        value = self.parameter(argument)
                        return value.split(",") if self._is_list_parameter(argument) else value
                    return self._resource(resolve_resource, argument, None)
                if key == "Fn::GetAtt":
                    return self._resource(resolve_resource, argument[0], argument[1])
                if key == "Fn::If":
                    name, when_true, when_false = argument
                    return walk(when_true if condition(name) else when_false)
                if key == "Fn::Equals":
                    left, right = (walk(a) for a in argument)
                    return str(left) == str(right)
                if key == "Fn::Join":
                    delimiter, items = argument
                    joined = walk(items)
                    return str(delimiter).join(str(v) for v in (joined if isinstance(joined, list) else [joined]))
                if key == "Fn::Not":
                    return not walk(argument[0])
                if key == "Fn::And":
                    return all(walk(a) for a in argument)
                if key == "Fn::Or":
                    return any(walk(a) for a in argument)
                if key == "Condition":
                    return condition(argument)
                if key.startswith("Fn::"):
                    raise TemplateError(f"the local stack cannot evaluate {key} ({argument!r})")
            return {k: v for k, v in ((k, walk(v)) for k, v in node.items()) if v is not NO_VALUE}

        return walk(value)

    def _is_list_parameter(self, name: str) -> bool:
        kind = str(self.document.get("Parameters", {}).get(name, {}).get("Type", ""))
        return kind == "CommaDelimitedList" or kind.startswith("List<")

    @staticmethod
    def _resource(resolve: Callable[[str, str | None], Any] | None, logical_id: str, attribute: str | None) -> Any:
        if resolve is None:
            raise TemplateError(f"no local value for {logical_id}{'.' + attribute if attribute else ''}")
        return resolve(logical_id, attribute)

    # ------------------------------------------------------------------ typed views

    @cached_property
    def queues(self) -> dict[str, QueueDefinition]:
        """The work queues (those with a redrive policy), by short name."""
        found = {}
        for logical_id, resource in self._of_type("AWS::SQS::Queue").items():
            props = resource.get("Properties", {})
            redrive = props.get("RedrivePolicy")
            if redrive is None:
                continue
            dlq = redrive["deadLetterTargetArn"]["Fn::GetAtt"][0]
            name = _short_name(logical_id, "Queue")
            found[name] = QueueDefinition(
                logical_id=logical_id,
                name=name,
                visibility_timeout=int(self.evaluate(props["VisibilityTimeout"])),
                retention_seconds=int(self.evaluate(props.get("MessageRetentionPeriod", 345600))),
                dead_letter_logical_id=dlq,
                dead_letter_retention_seconds=int(
                    self.evaluate(self.properties(dlq).get("MessageRetentionPeriod", 345600))
                ),
                max_receive_count=int(self.evaluate(redrive["maxReceiveCount"])),
            )
        return found

    def queue_by_logical_id(self, logical_id: str) -> QueueDefinition:
        for queue in self.queues.values():
            if logical_id in (queue.logical_id, queue.dead_letter_logical_id):
                return queue
        raise TemplateError(f"{logical_id} is not a queue of template.yaml")

    @cached_property
    def functions(self) -> dict[str, FunctionDefinition]:
        """Every Lambda function, by short name."""
        global_env = self.document.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
        found = {}
        for logical_id, resource in self._of_type("AWS::Serverless::Function").items():
            props = resource["Properties"]
            command = props.get("ImageConfig", {}).get("Command") or [props.get("Handler", "")]
            handler = command[0]
            if not re.fullmatch(r"[\w/]+\.\w+", handler):
                raise TemplateError(f"{logical_id}: cannot read a handler from {command!r}")
            module, function = handler.rsplit(".", 1)
            sqs, schedule = None, None
            for event in props.get("Events", {}).values():
                event_props = event.get("Properties", {})
                if event["Type"] == "SQS":
                    queue = self.queue_by_logical_id(event_props["Queue"]["Fn::GetAtt"][0])
                    scaling = event_props.get("ScalingConfig", {}).get("MaximumConcurrency")
                    sqs = SqsSource(
                        queue=queue.name,
                        batch_size=int(self.evaluate(event_props.get("BatchSize", 10))),
                        report_batch_item_failures="ReportBatchItemFailures"
                        in event_props.get("FunctionResponseTypes", []),
                        maximum_concurrency=None if scaling is None else int(self.evaluate(scaling)),
                    )
                elif event["Type"] == "Schedule":
                    schedule = _rate_seconds(self.evaluate(event_props["Schedule"]))
            name = _short_name(logical_id, "Function")
            found[name] = FunctionDefinition(
                logical_id=logical_id,
                name=name,
                handler=f"{module.replace('/', '.')}.{function}",
                memory_mb=int(self.evaluate(props.get("MemorySize", 128))),
                timeout_seconds=int(self.evaluate(props.get("Timeout", 3))),
                environment={**global_env, **props.get("Environment", {}).get("Variables", {})},
                sqs=sqs,
                schedule_seconds=schedule,
            )
        return found

    def function_environment(self, name: str, resolve_resource: Callable[[str, str | None], Any]) -> dict[str, str]:
        """A function's environment variables with the intrinsics evaluated (absent ones dropped)."""
        evaluated = self.evaluate(dict(self.functions[name].environment), resolve_resource)
        return {key: str(value) for key, value in evaluated.items()}

    def container_environment(
        self, task_definition: str, container: str, resolve_resource: Callable[[str, str | None], Any]
    ) -> dict[str, str]:
        """An ECS container's ``Environment`` (name -> value, intrinsics evaluated, absent ones dropped):
        what the local stack gives the process it runs in that container's place."""
        definitions = self.properties(task_definition).get("ContainerDefinitions", [])
        for definition in definitions:
            if definition.get("Name") == container:
                declared = definition.get("Environment", [])
                evaluated = self.evaluate(declared, resolve_resource)
                return {str(item["Name"]): str(item["Value"]) for item in evaluated if "Value" in item}
        raise TemplateError(f"{task_definition} has no container {container}")

    @cached_property
    def table(self) -> dict[str, Any]:
        """The jobs table's properties, in the DynamoDB API's own names where CloudFormation's match."""
        tables = self._of_type("AWS::DynamoDB::Table")
        if len(tables) != 1:
            raise TemplateError(f"expected one DynamoDB table in template.yaml, found {sorted(tables)}")
        declared = dict(next(iter(tables.values()))["Properties"])
        declared.pop("SSESpecification", None)  # the stack's KMS key: not reproduced locally
        return dict(self.evaluate(declared))

    @cached_property
    def bucket(self) -> dict[str, Any]:
        """The data bucket's properties (its name is local)."""
        return self.properties("DataBucket")

    @property
    def bucket_versioning(self) -> str | None:
        """The data bucket's versioning status (``Enabled``/``Suspended``), None if not configured."""
        status = self.bucket.get("VersioningConfiguration", {}).get("Status")
        return None if status is None else str(self.evaluate(status))

    @cached_property
    def bucket_notifications(self) -> list[BucketNotification]:
        configured = self.bucket.get("NotificationConfiguration", {}).get("QueueConfigurations", [])
        found = []
        for entry in configured:
            rules = {r["Name"]: r["Value"] for r in entry.get("Filter", {}).get("S3Key", {}).get("Rules", [])}
            found.append(
                BucketNotification(
                    prefix=rules.get("prefix", ""),
                    queue=self.queue_by_logical_id(entry["Queue"]["Fn::GetAtt"][0]).name,
                    events=(entry["Event"],),
                )
            )
        return found

    def lifecycle_rules(self) -> list[dict[str, Any]]:
        """The bucket's lifecycle rules in the S3 API's shape (parameters evaluated)."""
        rules = []
        for rule in self.evaluate(self.bucket.get("LifecycleConfiguration", {}).get("Rules", [])):
            converted: dict[str, Any] = {
                "ID": rule["Id"],
                "Status": rule["Status"],
                "Filter": {"Prefix": rule.get("Prefix", "")},
            }
            if "ExpirationInDays" in rule:
                converted["Expiration"] = {"Days": int(rule["ExpirationInDays"])}
            if rule.get("ExpiredObjectDeleteMarker"):
                converted["Expiration"] = {"ExpiredObjectDeleteMarker": True}
            if "NoncurrentVersionExpiration" in rule:
                days = int(rule["NoncurrentVersionExpiration"]["NoncurrentDays"])
                converted["NoncurrentVersionExpiration"] = {"NoncurrentDays": days}
            if "Transitions" in rule:
                converted["Transitions"] = [
                    {"Days": int(t["TransitionInDays"]), "StorageClass": t["StorageClass"]} for t in rule["Transitions"]
                ]
            if "AbortIncompleteMultipartUpload" in rule:
                days = int(rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"])
                converted["AbortIncompleteMultipartUpload"] = {"DaysAfterInitiation": days}
            rules.append(converted)
        return rules


def _short_name(logical_id: str, suffix: str) -> str:
    if not logical_id.endswith(suffix):
        raise TemplateError(f"{logical_id}: expected a name ending in {suffix}")
    stem = logical_id[: -len(suffix)]
    return re.sub(r"(?<!^)(?=[A-Z])", "-", stem).lower()


def _rate_seconds(expression: str) -> float:
    match = re.fullmatch(r"rate\((\d+) (minute|minutes|hour|hours|day|days)\)", expression)
    if not match:
        raise TemplateError(f"the local stack reads rate(...) schedules only, not {expression!r}")
    unit = {"minute": 60, "hour": 3600, "day": 86400}[match.group(2).rstrip("s")]
    return float(int(match.group(1)) * unit)
