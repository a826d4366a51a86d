"""template.yaml (AWS SAM): cfn-lint clean, and the structure the functions and ops rely on.

Offline: cfn-lint's own parser (CloudFormation tags such as !Ref, !GetAtt, !Sub) and rules; no AWS
account. `make sam-validate` adds the SAM translator's check in an environment of its own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import ManualArgs, lint_file
from cfnlint.decode import decode

from ichseg.pipeline.graph import GRAPH, Queue

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "template.yaml"
DOCKERFILE = "infrastructure/lambda/Dockerfile"

# The handler names fixed for everyone (functions/*.py and the local event pump use the same ones).
HANDLERS = {
    "ApiFunction": "functions/api.handler",
    "AuthorizerFunction": "functions/authorizer.handler",
    "SplitFunction": "functions/split.handler",
    "SegmentFunction": "functions/segment.handler",
    "AssembleFunction": "functions/assemble.handler",
    "MirrorFunction": "functions/mirror.handler",
    "WatchdogFunction": "functions/watchdog.handler",
}
SIZING = {  # MemorySize (MB), Timeout (s)
    "ApiFunction": (512, 10),
    "AuthorizerFunction": (512, 10),
    "SplitFunction": (3008, 300),
    "SegmentFunction": (1024, 120),
    "AssembleFunction": (3008, 300),
    "MirrorFunction": (512, 120),
}
QUEUE_CONSUMERS = {
    "IngestQueue": "SplitFunction",
    "SegmentQueue": "SegmentFunction",
    "AssembleQueue": "AssembleFunction",
    "MirrorQueue": "MirrorFunction",
}
DEAD_LETTER_QUEUES = {
    "IngestQueue": "IngestDeadLetterQueue",
    "SegmentQueue": "SegmentDeadLetterQueue",
    "AssembleQueue": "AssembleDeadLetterQueue",
    "MirrorQueue": "MirrorDeadLetterQueue",
    "DeliveryQueue": "DeliveryDeadLetterQueue",  # consumed by the DICOM gateway (ECS), not a function
}
# The watchdog's schedule invokes it asynchronously: its failed events go to a Lambda DLQ.
WATCHDOG_DLQ = "WatchdogDeadLetterQueue"
KEY_ARN = {"Fn::GetAtt": ["DataKey", "Arn"]}
# Each function's reserved concurrency parameter (segment's is the endpoint's bound).
RESERVED_CONCURRENCY = {
    "ApiFunction": "ApiReservedConcurrency",
    "AuthorizerFunction": "AuthorizerReservedConcurrency",
    "SplitFunction": "SplitReservedConcurrency",
    "SegmentFunction": "SegmentMaxConcurrency",
    "AssembleFunction": "AssembleReservedConcurrency",
    "MirrorFunction": "MirrorReservedConcurrency",
    "WatchdogFunction": "WatchdogReservedConcurrency",
}
# The services each role writes through (kms:GenerateDataKey via them); every role may Decrypt.
KMS_WRITES_VIA = {
    "ApiFunctionRole": {"s3", "dynamodb"},  # the presigned POST is signed by this role
    "AuthorizerFunctionRole": set(),  # only its environment
    "SplitFunctionRole": {"s3", "sqs", "dynamodb"},
    "SegmentFunctionRole": {"s3", "sqs", "dynamodb"},
    "AssembleFunctionRole": {"s3", "sqs", "dynamodb"},  # sqs: DeliveryQueue, MirrorQueue
    "MirrorFunctionRole": {"dynamodb"},  # reads results/, writes only the job row (and Firebase)
    "WatchdogFunctionRole": {"sqs", "dynamodb"},  # its Lambda DLQ
    "GatewayTaskRole": {"s3", "dynamodb"},  # ingest uploads, the job's delivery state
}
# The checkov checks template.yaml skips, where, and why (docs/deploy.md): nothing else may be skipped.
CHECKOV_SKIPS = {
    **{fn: {"CKV_AWS_117", "CKV_AWS_116"} for fn in HANDLERS if fn != "WatchdogFunction"},
    "WatchdogFunction": {"CKV_AWS_117"},  # has a DLQ: its invocations are asynchronous
    "AccessLogsBucket": {"CKV_AWS_18"},  # the access-log destination cannot log to itself
    "GatewayLoadBalancer": {"CKV_AWS_91"},  # NLB access logs cover TLS listeners only; the gateway logs associations
}
GLOBAL_ENV = {
    "ICHSEG_BUCKET",
    "ICHSEG_TABLE",
    "ICHSEG_SEGMENT_QUEUE_URL",
    "ICHSEG_ASSEMBLE_QUEUE_URL",
    "ICHSEG_INGEST_QUEUE_URL",
    "ICHSEG_BATCH_SLICES",
    "ICHSEG_JOB_DEADLINE_SECONDS",
    "ICHSEG_MAX_RECEIVE_COUNT",
    "ICHSEG_UPLOAD_MAX_BYTES",
    "FIREBASE_PROJECT_ID",
    "ICHSEG_FIREBASE_BUCKET",
    "ICHSEG_PUSH_PROJECT_ID",
    "POWERTOOLS_SERVICE_NAME",
    "POWERTOOLS_METRICS_NAMESPACE",
    "POWERTOOLS_LOG_LEVEL",
}
EXISTING_ENDPOINT_ARN = (
    "arn:${AWS::Partition}:sagemaker:${AWS::Region}:${AWS::AccountId}:endpoint/${ExistingEndpointName}"
)
# Services whose actions must always name their resources (never "*").
SCOPED_SERVICES = ("s3:", "dynamodb:", "sqs:", "sagemaker:", "secretsmanager:", "sns:", "logs:", "kms:")


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    parsed, errors = decode(str(TEMPLATE))
    assert not errors, [str(e) for e in errors]
    return parsed


@pytest.fixture(scope="module")
def resources(template: dict[str, Any]) -> dict[str, Any]:
    return template["Resources"]


def of_type(resources: dict[str, Any], type_: str) -> dict[str, Any]:
    return {name: r for name, r in resources.items() if r["Type"] == type_}


def props(resources: dict[str, Any], name: str) -> dict[str, Any]:
    return resources[name]["Properties"]


def branches(node: Any) -> Iterator[Any]:
    """Every value a node can take: both arms of Fn::If, minus AWS::NoValue."""
    if isinstance(node, dict) and set(node) == {"Fn::If"}:
        _, when_true, when_false = node["Fn::If"]
        yield from branches(when_true)
        yield from branches(when_false)
    elif node != {"Ref": "AWS::NoValue"}:
        yield node


def as_list(node: Any) -> list[Any]:
    return list(node) if isinstance(node, list) else [node]


def statements(resources: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(owner, statement) for every identity-policy statement: role inline policies and managed policies."""
    for name, res in resources.items():
        docs = []
        if res["Type"] == "AWS::IAM::Role":
            docs = [p["PolicyDocument"] for p in res["Properties"].get("Policies", [])]
        elif res["Type"] == "AWS::IAM::ManagedPolicy":
            docs = [res["Properties"]["PolicyDocument"]]
        for doc in docs:
            for stmt in doc["Statement"]:
                for concrete in branches(stmt):
                    yield name, concrete


def role_statements(resources: dict[str, Any], role: str) -> list[dict[str, Any]]:
    return [stmt for owner, stmt in statements(resources) if owner == role]


def allowed_resources(resources: dict[str, Any], role: str, action: str) -> list[Any]:
    found = []
    for stmt in role_statements(resources, role):
        if stmt["Effect"] == "Allow" and action in as_list(stmt["Action"]):
            for resource in as_list(stmt["Resource"]):
                found.extend(branches(resource))
    return found


def sub_string(node: Any) -> str:
    """The format string of a Fn::Sub (short or long form)."""
    value = node["Fn::Sub"]
    return value if isinstance(value, str) else value[0]


# --------------------------------------------------------------------------------------------------
def test_cfn_lint_reports_nothing() -> None:
    """No error, warning or informational finding, in a US and an EU region."""
    matches = lint_file(TEMPLATE, config=ManualArgs(regions=["us-east-1", "eu-central-1"], include_checks=["I"]))
    assert not matches, "\n".join(f"{m.rule.id} {m.message} (line {m.linenumber})" for m in matches)


def test_every_function_is_the_shared_image_with_a_fixed_handler(resources: dict[str, Any]) -> None:
    functions = of_type(resources, "AWS::Serverless::Function")
    assert set(functions) == set(HANDLERS)
    for name, fn in functions.items():
        p = fn["Properties"]
        assert p["PackageType"] == "Image", name
        assert p["ImageConfig"]["Command"] == [HANDLERS[name]], name
        # api and authorizer run the slim image (tests/pipeline/test_lean_functions.py checks what it lacks).
        dockerfile = f"{DOCKERFILE}.api" if name in ("ApiFunction", "AuthorizerFunction") else DOCKERFILE
        docker = {k: v for k, v in fn["Metadata"].items() if k != "checkov"}  # checkov: see test_checkov_skips
        assert docker == {"Dockerfile": dockerfile, "DockerContext": ".", "DockerTag": "python3.11"}, name
        assert p["Role"] == {"Fn::GetAtt": [f"{name}Role", "Arn"]}, name  # its own role
        assert p["LoggingConfig"]["LogGroup"] == {"Ref": f"{name}LogGroup"}, name
        if name in SIZING:
            assert (p["MemorySize"], p["Timeout"]) == SIZING[name], name
    assert (REPO / DOCKERFILE).is_file()


def test_lambda_dockerfile_serves_every_handler() -> None:
    text = (REPO / DOCKERFILE).read_text()
    assert re.search(r"^FROM \S+python:3\.11", text, re.M)
    assert "requirements/lambda.txt" in text
    assert "COPY ichseg/" in text and "COPY functions/" in text
    assert 'ENTRYPOINT ["/usr/local/bin/python", "-m", "awslambdaric"]' in text
    cmd = re.search(r'^CMD \["([^"]+)"\]', text, re.M)
    assert cmd and cmd.group(1) in HANDLERS.values()
    lines = (REPO / f"{DOCKERFILE}.dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*"  # an allow-list: only what the image copies reaches the build context
    assert {"!requirements/", "!ichseg/", "!functions/"} <= set(patterns)


def test_tracing_and_shared_environment(template: dict[str, Any], resources: dict[str, Any]) -> None:
    function_globals = template["Globals"]["Function"]
    assert function_globals["Tracing"] == "Active"
    env = function_globals["Environment"]["Variables"]
    assert set(env) == GLOBAL_ENV
    assert env["ICHSEG_BUCKET"] == {"Ref": "DataBucket"}
    assert env["ICHSEG_TABLE"] == {"Ref": "JobsTable"}
    assert env["ICHSEG_SEGMENT_QUEUE_URL"] == {"Ref": "SegmentQueue"}
    assert env["ICHSEG_ASSEMBLE_QUEUE_URL"] == {"Ref": "AssembleQueue"}
    assert env["POWERTOOLS_SERVICE_NAME"] == env["POWERTOOLS_METRICS_NAMESPACE"] == "ichseg"
    # Push only with the service account to send with; each function that can end a job may read it.
    assert env["ICHSEG_PUSH_PROJECT_ID"] == {
        "Fn::If": ["PushEnabled", {"Ref": "FirebaseProjectId"}, {"Ref": "AWS::NoValue"}]
    }
    assert template["Conditions"]["PushEnabled"]["Fn::And"][1] == {"Condition": "HasFirebaseSecret"}
    for name in ("SplitFunction", "SegmentFunction", "AssembleFunction", "WatchdogFunction"):
        variables = resources[name]["Properties"]["Environment"]["Variables"]
        assert "ICHSEG_FIREBASE_CREDENTIALS_SECRET_ARN" in variables, name
        role = resources[name]["Properties"]["Role"]["Fn::GetAtt"][0]
        statements = json.dumps(resources[role]["Properties"]["Policies"])
        assert "secretsmanager:GetSecretValue" in statements, name
    params = template["Parameters"]
    assert str(params["BatchSlices"]["Default"]) == "16"
    assert str(params["JobDeadlineSeconds"]["Default"]) == "900"
    local = props(resources, "AssembleFunction")["Environment"]["Variables"]
    assert local["ICHSEG_FIREBASE_CREDENTIALS_SECRET_ARN"] == {"Ref": "FirebaseCredentialsSecretArn"}
    assert "Environment" not in props(resources, "AuthorizerFunction")  # verification needs only the project id


def test_segment_gets_exactly_one_way_to_the_endpoint(resources: dict[str, Any]) -> None:
    env = props(resources, "SegmentFunction")["Environment"]["Variables"]
    name = env["ICHSEG_ENDPOINT_NAME"]["Fn::If"]
    assert name[0] == "CreateEndpoint"
    assert name[1] == {"Fn::GetAtt": ["SegmentationEndpoint", "EndpointName"]}
    assert name[2] == {"Fn::If": ["UseExistingEndpoint", {"Ref": "ExistingEndpointName"}, {"Ref": "AWS::NoValue"}]}
    assert env["ICHSEG_ENDPOINT_URL"] == {"Fn::If": ["UseEndpointUrl", {"Ref": "EndpointUrl"}, {"Ref": "AWS::NoValue"}]}


def test_queues_have_dead_letter_queues_and_sized_visibility(resources: dict[str, Any]) -> None:
    queues = of_type(resources, "AWS::SQS::Queue")
    assert set(queues) == set(DEAD_LETTER_QUEUES) | set(DEAD_LETTER_QUEUES.values()) | {WATCHDOG_DLQ}
    assert "RedrivePolicy" not in props(resources, WATCHDOG_DLQ)
    for source, dlq in DEAD_LETTER_QUEUES.items():
        p = props(resources, source)
        # Deliveries wait out a PACS outage (hours); pipeline stages give up after a few receives.
        receives = {"DeliveryQueue": "DeliveryMaxReceiveCount", "MirrorQueue": "MirrorMaxReceiveCount"}.get(
            source, "MaxReceiveCount"
        )
        assert p["RedrivePolicy"] == {
            "deadLetterTargetArn": {"Fn::GetAtt": [dlq, "Arn"]},
            "maxReceiveCount": {"Ref": receives},
        }
        assert "RedrivePolicy" not in props(resources, dlq)
        # a DLQ must keep messages longer than its source (retention counts from the first enqueue)
        assert props(resources, dlq)["MessageRetentionPeriod"] > p["MessageRetentionPeriod"]
        if source in QUEUE_CONSUMERS:
            consumer = QUEUE_CONSUMERS[source]
            assert p["VisibilityTimeout"] >= 6 * props(resources, consumer)["Timeout"], source
    # the gateway's delivery: its retries within one receive (backoff doubles per receive) fit
    assert props(resources, "DeliveryQueue")["VisibilityTimeout"] >= 600


def test_sqs_event_sources_report_partial_batch_failures(resources: dict[str, Any]) -> None:
    for queue, function in QUEUE_CONSUMERS.items():
        events = [e for e in props(resources, function)["Events"].values() if e["Type"] == "SQS"]
        assert len(events) == 1, function
        event = events[0]["Properties"]
        assert event["Queue"] == {"Fn::GetAtt": [queue, "Arn"]}
        assert event["FunctionResponseTypes"] == ["ReportBatchItemFailures"], function
    schedule = props(resources, "WatchdogFunction")["Events"]["Every5Minutes"]
    assert schedule == {"Type": "Schedule", "Properties": {"Schedule": "rate(5 minutes)"}}


def test_bucket_is_private_encrypted_and_tls_only(resources: dict[str, Any]) -> None:
    bucket = props(resources, "DataBucket")
    assert bucket["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    sse = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
    assert sse["SSEAlgorithm"] in {"AES256", "aws:kms"}
    assert "POST" in bucket["CorsConfiguration"]["CorsRules"][0]["AllowedMethods"]  # the app's presigned POST

    policy = props(resources, "DataBucketPolicy")
    assert policy["Bucket"] == {"Ref": "DataBucket"}
    deny = [s for s in policy["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"]
    assert any(
        s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        and s["Action"] == "s3:*"
        and s["Principal"] == "*"
        and {"Fn::GetAtt": ["DataBucket", "Arn"]} in s["Resource"]
        and {"Fn::Sub": "${DataBucket.Arn}/*"} in s["Resource"]
        for s in deny
    )


def test_bucket_lifecycle_expires_work_files(template: dict[str, Any], resources: dict[str, Any]) -> None:
    rules = {r["Prefix"]: r for r in props(resources, "DataBucket")["LifecycleConfiguration"]["Rules"] if "Prefix" in r}
    assert rules["work/"]["ExpirationInDays"] == {"Ref": "WorkRetentionDays"}
    assert str(template["Parameters"]["WorkRetentionDays"]["Default"]) == "7"
    assert rules["results/"]["Transitions"][0]["StorageClass"] == "STANDARD_IA"
    assert "ExpirationInDays" in rules["results/"]


def test_uploads_and_ingest_notify_the_ingest_queue(resources: dict[str, Any]) -> None:
    bucket = resources["DataBucket"]
    configs = bucket["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    prefixes = {}
    for config in configs:
        assert config["Event"] == "s3:ObjectCreated:*"
        assert config["Queue"] == {"Fn::GetAtt": ["IngestQueue", "Arn"]}
        (rule,) = config["Filter"]["S3Key"]["Rules"]
        assert rule["Name"] == "prefix"
        prefixes[rule["Value"]] = config
    assert set(prefixes) == {"uploads/", "ingest/"}

    # S3 validates the destination when the notification is set: the queue policy comes first, and
    # names the bucket by the same computed string as BucketName (a !Ref would be a cycle).
    assert "IngestQueuePolicy" in bucket["DependsOn"]
    (stmt,) = props(resources, "IngestQueuePolicy")["PolicyDocument"]["Statement"]
    assert stmt["Principal"] == {"Service": "s3.amazonaws.com"} and stmt["Action"] == "sqs:SendMessage"
    assert stmt["Resource"] == {"Fn::GetAtt": ["IngestQueue", "Arn"]}
    source_arn = stmt["Condition"]["ArnEquals"]["aws:SourceArn"]["Fn::Sub"]
    bucket_name = bucket["Properties"]["BucketName"]["Fn::Sub"]
    assert source_arn[0] == "arn:${AWS::Partition}:s3:::" + bucket_name[0]
    assert source_arn[1] == bucket_name[1]
    assert stmt["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}


def test_jobs_table(resources: dict[str, Any]) -> None:
    table = props(resources, "JobsTable")
    assert table["KeySchema"] == [{"AttributeName": "job_id", "KeyType": "HASH"}]
    types = {a["AttributeName"]: a["AttributeType"] for a in table["AttributeDefinitions"]}
    assert types == {"job_id": "S", "owner": "S", "created_at": "S"}
    (gsi,) = table["GlobalSecondaryIndexes"]
    assert gsi["IndexName"] == "by_owner"
    assert gsi["KeySchema"] == [
        {"AttributeName": "owner", "KeyType": "HASH"},
        {"AttributeName": "created_at", "KeyType": "RANGE"},
    ]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert table["SSESpecification"]["SSEEnabled"] is True


def test_only_segment_may_invoke_and_only_this_endpoint(resources: dict[str, Any]) -> None:
    invokers = {owner for owner, s in statements(resources) if "sagemaker:InvokeEndpoint" in as_list(s["Action"])}
    assert invokers == {"SegmentFunctionRole"}
    targets = allowed_resources(resources, "SegmentFunctionRole", "sagemaker:InvokeEndpoint")
    assert targets == [
        {"Ref": "SegmentationEndpoint"},  # Ref of AWS::SageMaker::Endpoint is its ARN
        {"Fn::Sub": EXISTING_ENDPOINT_ARN},
    ]
    invoke = [s for s in role_statements(resources, "SegmentFunctionRole") if s.get("Sid") == "InvokeThisEndpointOnly"]
    assert invoke and all(s["Action"] == "sagemaker:InvokeEndpoint" for s in invoke)


def test_no_wildcard_resources_or_actions_on_data_services(resources: dict[str, Any]) -> None:
    seen = 0
    for owner, stmt in statements(resources):
        actions = as_list(stmt["Action"])
        if stmt["Effect"] != "Allow" or not any(a.startswith(SCOPED_SERVICES) for a in actions):
            continue
        seen += 1
        assert not any(a.endswith(":*") or a == "*" for a in actions), (owner, actions)
        for resource in as_list(stmt["Resource"]):
            for value in branches(resource):
                assert value != "*", (owner, stmt.get("Sid"), actions)
                if isinstance(value, dict) and "Fn::Sub" in value:
                    assert not sub_string(value).endswith(":*"), (owner, value)
    assert seen > 20


def test_pipeline_roles_touch_only_their_prefixes_and_queues(resources: dict[str, Any]) -> None:
    def prefixes(role: str, action: str) -> set[str]:
        found = set()
        for r in allowed_resources(resources, role, action):
            assert isinstance(r, dict) and "Fn::Sub" in r, (role, r)
            found.add(sub_string(r).removeprefix("${DataBucket.Arn}/"))
        return found

    assert prefixes("ApiFunctionRole", "s3:PutObject") == {"uploads/*"}
    assert prefixes("SplitFunctionRole", "s3:PutObject") == {"work/*"}
    # Segment writes each batch's masks and plain frames as it renders them, nothing else of results/.
    assert prefixes("SegmentFunctionRole", "s3:PutObject") == {"work/*", "results/*/masks/*", "results/*/frames/*"}
    for role in ("SegmentFunctionRole", "AssembleFunctionRole"):  # a job retried by itself (retry.py)
        assert prefixes(role, "s3:DeleteObject") == {"work/*", "results/*"}, role
        assert {"uploads/*", "ingest/*"} <= prefixes(role, "s3:GetObject"), role
    assert prefixes("AssembleFunctionRole", "s3:PutObject") == {"results/*"}
    assert not allowed_resources(resources, "WatchdogFunctionRole", "s3:GetObject")
    assert not allowed_resources(resources, "AuthorizerFunctionRole", "s3:GetObject")

    def queues(role: str, action: str) -> set[str]:
        return {r["Fn::GetAtt"][0] for r in allowed_resources(resources, role, action)}

    # The stage graph (ichseg/pipeline/graph.py) is the template's: each function reads its queue
    # and may send to exactly the queues the graph gives it.
    for step in GRAPH:
        role = f"{step.function.title()}FunctionRole"
        assert queues(role, "sqs:ReceiveMessage") == {step.reads.logical_id}, step.function
        assert queues(role, "sqs:SendMessage") == {q.logical_id for q in step.sends}, step.function
        event = resources[f"{step.function.title()}Function"]["Properties"]["Events"]
        assert [e["Properties"]["Queue"]["Fn::GetAtt"][0] for e in event.values() if e["Type"] == "SQS"] == [
            step.reads.logical_id
        ], step.function
    assert {q.logical_id for q in Queue} == {n for n, r in resources.items() if r["Type"] == "AWS::SQS::Queue"} - {
        n for n in resources if n.endswith("DeadLetterQueue")
    }

    secret_readers = {o for o, s in statements(resources) if "secretsmanager:GetSecretValue" in as_list(s["Action"])}
    # Assemble mirrors results to Firebase Storage, the mirror function retries that copy; the API
    # deletes it (DELETE /v1/scans/{job_id}). Split, segment and the watchdog can fail a job, which
    # is pushed to its owner's devices (only with PushEnabled). The gateway's execution role reads
    # its delivery TLS secrets (test_gateway_delivery_tls_secrets...).
    assert secret_readers == {
        "AssembleFunctionRole",
        "MirrorFunctionRole",
        "ApiFunctionRole",
        "SplitFunctionRole",
        "SegmentFunctionRole",
        "WatchdogFunctionRole",
        "GatewayExecutionRole",
    }
    for role in secret_readers - {"GatewayExecutionRole"}:
        assert allowed_resources(resources, role, "secretsmanager:GetSecretValue") == [
            {"Ref": "FirebaseCredentialsSecretArn"}
        ]
    # The API deletes object versions under the job prefixes only.
    assert prefixes("ApiFunctionRole", "s3:DeleteObjectVersion") == {"uploads/*", "work/*", "results/*"}


def test_router_may_put_under_ingest_only(resources: dict[str, Any]) -> None:
    writer = role_statements(resources, "IngestWriterPolicy")
    s3_writes = [s for s in writer if any(a.startswith("s3:") for a in as_list(s["Action"]))]
    assert [s["Resource"] for s in s3_writes] == [{"Fn::Sub": "${DataBucket.Arn}/ingest/*"}]
    assert all(a in {"s3:PutObject", "s3:AbortMultipartUpload"} for s in s3_writes for a in as_list(s["Action"]))
    # the bucket is SSE-KMS: the router needs the key, only through S3
    (kms,) = [s for s in writer if s not in s3_writes]
    assert set(as_list(kms["Action"])) == {"kms:GenerateDataKey", "kms:Decrypt"} and kms["Resource"] == KEY_ARN
    assert kms["Condition"] == {"StringEquals": {"kms:ViaService": {"Fn::Sub": "s3.${AWS::Region}.amazonaws.com"}}}
    role = resources["IngestRouterRole"]
    assert role["Condition"] == "HasRouterPrincipal"
    assert {"Ref": "IngestWriterPolicy"} in role["Properties"]["ManagedPolicyArns"]
    for stmt in role_statements(resources, "ResultsReaderPolicy"):
        assert set(as_list(stmt["Action"])) <= {"s3:GetObject", "s3:ListBucket", "kms:Decrypt"}
        if stmt["Action"] == "kms:Decrypt":
            assert stmt["Resource"] == KEY_ARN and "kms:ViaService" in stmt["Condition"]["StringEquals"]


def test_alarms_on_every_dead_letter_queue_and_function(resources: dict[str, Any]) -> None:
    alarms = of_type(resources, "AWS::CloudWatch::Alarm").values()
    watched_dlqs = set()
    watched_functions = set()
    for alarm in alarms:
        p = alarm["Properties"]
        assert {"Ref": "AlarmTopic"} in p["AlarmActions"]
        dims = {d["Name"]: d["Value"] for d in p.get("Dimensions", [])}
        if p.get("Namespace") == "AWS/SQS" and p["MetricName"] == "ApproximateNumberOfMessagesVisible":
            assert p["ComparisonOperator"] == "GreaterThanThreshold" and p["Threshold"] == 0
            watched_dlqs.add(dims["QueueName"]["Fn::GetAtt"][0])
        if p.get("Namespace") == "AWS/Lambda" and p["MetricName"] == "Errors":
            watched_functions.add(dims["FunctionName"]["Ref"])
    assert watched_dlqs == set(DEAD_LETTER_QUEUES.values()) | {WATCHDOG_DLQ}
    assert watched_functions == set(HANDLERS)


def test_service_alarms_watch_queue_age_latency_failure_rate_and_api_5xx(resources: dict[str, Any]) -> None:
    alarms = of_type(resources, "AWS::CloudWatch::Alarm")
    aged = {
        a["Properties"]["Dimensions"][0]["Value"]["Fn::GetAtt"][0]
        for a in alarms.values()
        if a["Properties"].get("MetricName") == "ApproximateAgeOfOldestMessage"
    }
    assert aged == {"IngestQueue", "SegmentQueue", "AssembleQueue"}  # the queues a job waits on
    latency = props(resources, "EndToEndLatencyAlarm")
    assert (latency["Namespace"], latency["MetricName"], latency["ExtendedStatistic"]) == (
        "ichseg",
        "EndToEndLatency",
        "p95",
    )
    assert latency["Dimensions"] == [{"Name": "service", "Value": "ichseg"}]  # Powertools' EMF dimension
    rate = {m["Id"]: m for m in props(resources, "AppJobFailureRateAlarm")["Metrics"]}
    assert {rate[i]["MetricStat"]["Metric"]["MetricName"] for i in ("failed", "hospital", "done")} == {
        "JobsFailed",
        "HospitalJobsFailed",
        "JobsCompleted",
    }
    assert rate["rate"]["ReturnData"] is True and "FILL(hospital, 0)" in rate["rate"]["Expression"]
    api = props(resources, "Api5xxAlarm")
    assert (api["Namespace"], api["MetricName"], api["Dimensions"][0]["Value"]) == (
        "AWS/ApiGateway",
        "5xx",
        {"Ref": "HttpApi"},
    )
    body = props(resources, "Dashboard")["DashboardBody"]["Fn::Sub"][0]
    for name in (
        "IngestAgeAlarm",
        "SegmentAgeAlarm",
        "AssembleAgeAlarm",
        "EndToEndLatencyAlarm",
        "AppJobFailureRateAlarm",
        "Api5xxAlarm",
    ):
        assert f"${{{name}.Arn}}" in body, name
    subscription = resources["AlarmEmailSubscription"]
    assert subscription["Condition"] == "HasAlarmEmail"
    assert subscription["Properties"]["TopicArn"] == {"Ref": "AlarmTopic"}


def test_http_api_uses_the_firebase_authorizer(resources: dict[str, Any]) -> None:
    api = props(resources, "HttpApi")
    auth = api["Auth"]
    assert auth["DefaultAuthorizer"] == "FirebaseAuthorizer"
    authorizer = auth["Authorizers"]["FirebaseAuthorizer"]
    assert authorizer["FunctionArn"] == {"Fn::GetAtt": ["AuthorizerFunction", "Arn"]}
    assert authorizer["AuthorizerPayloadFormatVersion"] == "2.0"
    assert authorizer["EnableSimpleResponses"] is True
    assert authorizer["EnableFunctionDefaultPermissions"] is True  # else API Gateway may not invoke it
    assert authorizer["Identity"]["Headers"] == ["Authorization"]
    assert "$context.requestId" in api["AccessLogSettings"]["Format"]
    assert {"ThrottlingBurstLimit", "ThrottlingRateLimit"} <= set(api["DefaultRouteSettings"])
    assert api["CorsConfiguration"]["AllowOrigins"] == {"Ref": "CorsAllowedOrigins"}
    routes = {
        (e["Properties"]["Method"], e["Properties"]["Path"])
        for e in props(resources, "ApiFunction")["Events"].values()
        if e["Type"] == "HttpApi" and e["Properties"]["ApiId"] == {"Ref": "HttpApi"}
    }
    # The generated OpenAPI document's routes (tests/pipeline/test_api_contract.py checks the local front too).
    from infrastructure.api_front import routes_from_openapi

    assert routes == {(route.method, route.template) for route in routes_from_openapi()}
    assert ("DELETE", "/v1/scans/{job_id}") in routes


def test_endpoint_modes_and_autoscaling(template: dict[str, Any], resources: dict[str, Any]) -> None:
    params = template["Parameters"]
    assert params["EndpointMode"]["AllowedValues"] == ["create", "existing", "url"]
    assert params["EndpointInstanceType"]["Default"] == "ml.g5.xlarge"
    for name in ("EndpointModelRole", "SegmentationModel", "SegmentationEndpointConfig", "SegmentationEndpoint"):
        assert resources[name]["Condition"] == "CreateEndpoint", name
    # the inference container makes no network calls (SageMaker fetches the image and the model)
    assert props(resources, "SegmentationModel")["EnableNetworkIsolation"] is True
    model = props(resources, "SegmentationModel")["PrimaryContainer"]
    assert model["Image"] == {"Ref": "EndpointImageUri"} and model["ModelDataUrl"] == {"Ref": "ModelDataUrl"}
    assert model["Environment"]["ICHSEG_MODEL"] == {"Fn::Sub": "/opt/ml/model/${EndpointModelFile}"}
    (variant,) = props(resources, "SegmentationEndpointConfig")["ProductionVariants"]
    assert variant["InstanceType"] == {"Ref": "EndpointInstanceType"}
    # onnxruntime-gpu in the endpoint image needs CUDA 13, i.e. the driver of this inference AMI
    assert variant["InferenceAmiVersion"]["Fn::If"][1] == {"Ref": "EndpointInferenceAmiVersion"}
    assert params["EndpointInferenceAmiVersion"]["Default"] == "al2023-ami-sagemaker-inference-gpu-4-1"
    assert variant["VariantName"] == "AllTraffic"
    target = props(resources, "EndpointScalableTarget")
    assert target["ServiceNamespace"] == "sagemaker"
    assert target["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    assert sub_string(target["ResourceId"]) == "endpoint/${SegmentationEndpoint.EndpointName}/variant/AllTraffic"
    policy = props(resources, "EndpointScalingPolicy")
    assert policy["PolicyType"] == "TargetTrackingScaling"
    metric = policy["TargetTrackingScalingPolicyConfiguration"]["PredefinedMetricSpecification"]
    assert metric["PredefinedMetricType"] == "SageMakerVariantInvocationsPerInstance"
    # each mode's parameters are enforced at deploy time
    rules = template["Rules"]
    assert {"CreateModeNeedsArtifacts", "ExistingModeNeedsName", "UrlModeNeedsUrl"} <= set(rules)


def test_dashboard_is_valid_json_and_covers_the_pipeline(resources: dict[str, Any]) -> None:
    body_template, variables = props(resources, "Dashboard")["DashboardBody"]["Fn::Sub"]
    names = set(re.findall(r"\$\{([^}]+)\}", body_template))
    for name in names:  # every ${...} is a variable, a pseudo parameter or a resource (attribute)
        assert name in variables or name.startswith("AWS::") or name.split(".")[0] in resources, name
    body = json.loads(re.sub(r"\$\{[^}]+\}", "x", body_template))
    assert len(body["widgets"]) >= 8
    for queue in [*DEAD_LETTER_QUEUES, *DEAD_LETTER_QUEUES.values(), WATCHDOG_DLQ]:
        assert f"{queue}.QueueName" in names, queue
    for function in HANDLERS:
        assert function in names, function
    for metric in ("Invocations", "ModelLatency", "Invocation5XXErrors"):
        assert f'"AWS/SageMaker", "{metric}"' in body_template, metric
    charted = set(re.findall(r'MetricName=\\"(\w+)\\"', body_template))
    missing = emitted_metrics() - charted
    assert not missing, f"EMF metrics the code emits but the dashboard (template.yaml) does not chart: {missing}"


def emitted_metrics() -> set[str]:
    """EMF metric names the Lambda code emits (literal add_metric names, plus the per-stage latencies)."""
    stages = ("split", "segment", "assemble", "mirror")
    names = {f"{stage.capitalize()}Latency" for stage in stages}  # functions.stage_latency
    for path in [*(REPO / "functions").glob("*.py"), *(REPO / "ichseg" / "pipeline").glob("*.py")]:
        names.update(re.findall(r'add_metric\(\s*"(\w+)"', path.read_text()))
    return names


# --------------------------------------------------------------------------------------------------
# Security properties (`make lint` runs checkov on template.yaml; these pin what it cannot see: which
# key, which principals, which reasons).


def test_one_rotating_customer_managed_key_encrypts_every_store(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    (key,) = of_type(resources, "AWS::KMS::Key")
    assert key == "DataKey"
    assert props(resources, "DataKey")["EnableKeyRotation"] is True
    assert resources["DataKey"]["DeletionPolicy"] == "Retain"  # the retained bucket, table and logs need it

    sse = props(resources, "DataBucket")["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    assert sse["ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": KEY_ARN}
    assert sse["BucketKeyEnabled"] is True
    for name in of_type(resources, "AWS::SQS::Queue"):
        assert props(resources, name)["KmsMasterKeyId"] == KEY_ARN, name
        assert "SqsManagedSseEnabled" not in props(resources, name), name
    table_sse = props(resources, "JobsTable")["SSESpecification"]
    assert table_sse == {"SSEEnabled": True, "SSEType": "KMS", "KMSMasterKeyId": KEY_ARN}
    log_groups = of_type(resources, "AWS::Logs::LogGroup")
    assert len(log_groups) == 9  # seven functions, the API's access log, the gateway
    for name in log_groups:
        assert props(resources, name)["KmsKeyId"] == KEY_ARN, name
    assert props(resources, "AlarmTopic")["KmsMasterKeyId"] == {"Ref": "DataKey"}
    assert template["Globals"]["Function"]["KmsKeyArn"] == KEY_ARN  # the functions' environment
    for name in HANDLERS:
        assert "KmsKeyArn" not in props(resources, name), name  # no function opts out


def test_key_policy_admits_exactly_these_service_principals(resources: dict[str, Any]) -> None:
    statements_ = props(resources, "DataKey")["KeyPolicy"]["Statement"]
    by_sid = {s["Sid"]: s for s in statements_}
    assert len(by_sid) == len(statements_)
    assert all(s["Effect"] == "Allow" and s["Principal"] != "*" for s in statements_)

    # the account (KMS's default statement): administration, and use delegated to IAM in this account
    account = by_sid["AccountAdministersAndDelegatesToIam"]
    assert account["Principal"] == {"AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}}
    services = {sid: s["Principal"]["Service"] for sid, s in by_sid.items() if "Service" in s["Principal"]}
    assert set(by_sid) == {account["Sid"], *services}
    assert sorted(map(str, services.values())) == sorted(
        map(str, [{"Fn::Sub": "logs.${AWS::Region}.amazonaws.com"}, "s3.amazonaws.com", "cloudwatch.amazonaws.com"])
    )

    logs = by_sid["CloudWatchLogsEncryptsThisAccountsLogGroups"]
    context = logs["Condition"]["ArnLike"]["kms:EncryptionContext:aws:logs:arn"]
    assert sub_string(context) == "arn:${AWS::Partition}:logs:${AWS::Region}:${AWS::AccountId}:log-group:*"

    s3 = by_sid["DataBucketNotifiesTheEncryptedIngestQueue"]
    assert set(as_list(s3["Action"])) == {"kms:GenerateDataKey", "kms:Decrypt"}
    source_arn = s3["Condition"]["ArnEquals"]["aws:SourceArn"]["Fn::Sub"]
    bucket_name = props(resources, "DataBucket")["BucketName"]["Fn::Sub"]
    assert source_arn == ["arn:${AWS::Partition}:s3:::" + bucket_name[0], bucket_name[1]]  # this stack's bucket
    assert s3["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}

    alarms = by_sid["AlarmsPublishToTheEncryptedTopic"]
    assert set(as_list(alarms["Action"])) == {"kms:GenerateDataKey*", "kms:Decrypt"}
    assert alarms["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    assert ":alarm:" in sub_string(alarms["Condition"]["ArnLike"]["aws:SourceArn"])


def test_each_role_uses_the_key_only_as_it_needs(resources: dict[str, Any]) -> None:
    users = set()
    for owner, stmt in statements(resources):
        actions = [a for a in as_list(stmt["Action"]) if a.startswith("kms:")]
        if not actions:
            continue
        users.add(owner)
        assert stmt["Resource"] == KEY_ARN, owner  # this key, never kms:* or another key
        assert set(actions) <= {"kms:Decrypt", "kms:GenerateDataKey"}, (owner, actions)
    assert users == set(KMS_WRITES_VIA) | {"IngestWriterPolicy", "ResultsReaderPolicy"}
    for role, services in KMS_WRITES_VIA.items():
        assert allowed_resources(resources, role, "kms:Decrypt") == [KEY_ARN], role  # the environment, reads
        writes = [s for s in role_statements(resources, role) if "kms:GenerateDataKey" in as_list(s["Action"])]
        if not services:
            assert not writes, role
            continue
        (write,) = writes
        via = write["Condition"]["StringEquals"]["kms:ViaService"]
        assert {sub_string(v).split(".")[0] for v in via} == services, role
        assert all(sub_string(v).endswith(".${AWS::Region}.amazonaws.com") for v in via), role


def test_bucket_is_versioned_old_versions_expire_and_access_is_logged(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    bucket = props(resources, "DataBucket")
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    rules = {r["Id"]: r for r in bucket["LifecycleConfiguration"]["Rules"]}
    noncurrent = rules["expire-noncurrent-versions"]
    assert "Prefix" not in noncurrent  # the whole bucket
    assert noncurrent["NoncurrentVersionExpiration"] == {"NoncurrentDays": {"Ref": "NoncurrentVersionRetentionDays"}}
    assert noncurrent["ExpiredObjectDeleteMarker"] is True
    assert int(template["Parameters"]["NoncurrentVersionRetentionDays"]["Default"]) <= 30

    assert bucket["LoggingConfiguration"] == {
        "DestinationBucketName": {"Ref": "AccessLogsBucket"},
        "LogFilePrefix": "data-bucket/",
    }
    assert "AccessLogsBucketPolicy" in resources["DataBucket"]["DependsOn"]
    logs = props(resources, "AccessLogsBucket")
    assert resources["AccessLogsBucket"]["DeletionPolicy"] == "Retain"  # the audit trail
    # S3 server access logging cannot deliver to an SSE-KMS bucket
    assert logs["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "AES256"
    }
    assert logs["PublicAccessBlockConfiguration"] == bucket["PublicAccessBlockConfiguration"]
    assert logs["VersioningConfiguration"] == {"Status": "Enabled"}
    (expiry,) = logs["LifecycleConfiguration"]["Rules"]
    assert expiry["ExpirationInDays"] == {"Ref": "AccessLogRetentionDays"} and "NoncurrentVersionExpiration" in expiry
    policy = props(resources, "AccessLogsBucketPolicy")["PolicyDocument"]["Statement"]
    (delivery,) = [s for s in policy if s["Effect"] == "Allow"]
    assert delivery["Principal"] == {"Service": "logging.s3.amazonaws.com"} and delivery["Action"] == "s3:PutObject"
    assert delivery["Resource"] == {"Fn::Sub": "${AccessLogsBucket.Arn}/data-bucket/*"}
    source_arn = delivery["Condition"]["ArnEquals"]["aws:SourceArn"]["Fn::Sub"]
    assert source_arn == [
        "arn:${AWS::Partition}:s3:::" + bucket["BucketName"]["Fn::Sub"][0],
        bucket["BucketName"]["Fn::Sub"][1],
    ]
    assert any(s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} for s in policy)


def test_reserved_concurrency_bounds_every_function(template: dict[str, Any], resources: dict[str, Any]) -> None:
    params = template["Parameters"]
    for name, param in RESERVED_CONCURRENCY.items():
        assert props(resources, name)["ReservedConcurrentExecutions"] == {"Ref": param}, name
        assert int(params[param]["MinValue"]) >= 1, param
    # an SQS consumer's pollers never exceed its reserved executions (a throttled receive counts toward
    # the DLQ): the same parameter for both
    for name in ("SplitFunction", "SegmentFunction", "AssembleFunction", "MirrorFunction"):
        (event,) = [e for e in props(resources, name)["Events"].values() if e["Type"] == "SQS"]
        assert event["Properties"]["ScalingConfig"]["MaximumConcurrency"] == {"Ref": RESERVED_CONCURRENCY[name]}
        assert int(params[RESERVED_CONCURRENCY[name]]["MinValue"]) >= 2, name  # MaximumConcurrency's minimum
    assert str(params["SegmentMaxConcurrency"]["Default"]) == "20"  # the endpoint's bound is unchanged
    # with the default account limit (1000), Lambda keeps 100 executions unreserved
    assert sum(int(params[p]["Default"]) for p in RESERVED_CONCURRENCY.values()) <= 900


def test_watchdog_has_a_dead_letter_queue(resources: dict[str, Any]) -> None:
    assert props(resources, "WatchdogFunction")["DeadLetterQueue"] == {
        "Type": "SQS",
        "TargetArn": {"Fn::GetAtt": [WATCHDOG_DLQ, "Arn"]},
    }
    # a custom role gets no policy from SAM: Lambda sends with the function's role
    assert allowed_resources(resources, "WatchdogFunctionRole", "sqs:SendMessage") == [
        {"Fn::GetAtt": [WATCHDOG_DLQ, "Arn"]}
    ]


def test_checkov_skips_are_the_agreed_ones_with_reasons(resources: dict[str, Any]) -> None:
    skipped = {}
    for name, res in resources.items():
        skips = res.get("Metadata", {}).get("checkov", {}).get("skip", [])
        if skips:
            skipped[name] = {s["id"] for s in skips}
            for skip in skips:
                assert len(skip.get("comment", "")) > 40, (name, skip["id"])  # a reason, not a shrug
    assert skipped == CHECKOV_SKIPS


def test_outputs(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    for name in ("ApiUrl", "BucketName", "TableName", "IngestQueueUrl", "SegmentQueueUrl", "AssembleQueueUrl"):
        assert name in outputs, name
    assert outputs["DashboardName"]["Value"] == {"Ref": "Dashboard"}


# --------------------------------------------------------------------------------------------------
# The DICOM gateway (issue 12): an optional ECS service behind an internal NLB, fed by DeliveryQueue.

GATEWAY_RESOURCES = {  # everything the gateway adds, and its type; all of it only with DeployGateway
    "GatewayCluster": "AWS::ECS::Cluster",
    "GatewayLogGroup": "AWS::Logs::LogGroup",
    "GatewayExecutionRole": "AWS::IAM::Role",
    "GatewayTaskRole": "AWS::IAM::Role",
    "GatewaySpool": "AWS::EFS::FileSystem",
    "GatewaySpoolAccessPoint": "AWS::EFS::AccessPoint",
    "GatewaySpoolMountTargetA": "AWS::EFS::MountTarget",
    "GatewaySpoolMountTargetB": "AWS::EFS::MountTarget",
    "GatewayLoadBalancerSecurityGroup": "AWS::EC2::SecurityGroup",
    "GatewayLoadBalancerTlsIngress": "AWS::EC2::SecurityGroupIngress",
    "GatewayLoadBalancerToTasks": "AWS::EC2::SecurityGroupEgress",
    "GatewayLoadBalancerToTasksStatus": "AWS::EC2::SecurityGroupEgress",
    "GatewaySecurityGroup": "AWS::EC2::SecurityGroup",
    "GatewayTasksToSpool": "AWS::EC2::SecurityGroupEgress",
    "GatewaySpoolSecurityGroup": "AWS::EC2::SecurityGroup",
    "GatewayLoadBalancer": "AWS::ElasticLoadBalancingV2::LoadBalancer",
    "GatewayTargetGroup": "AWS::ElasticLoadBalancingV2::TargetGroup",
    "GatewayDicomListener": "AWS::ElasticLoadBalancingV2::Listener",
    "GatewayDicomTlsListener": "AWS::ElasticLoadBalancingV2::Listener",
    "GatewayStatusTargetGroup": "AWS::ElasticLoadBalancingV2::TargetGroup",
    "GatewayStatusListener": "AWS::ElasticLoadBalancingV2::Listener",
    "GatewayTaskDefinition": "AWS::ECS::TaskDefinition",
    "GatewayService": "AWS::ECS::Service",
    "DeliveryFailuresAlarm": "AWS::CloudWatch::Alarm",
}
GATEWAY_DOCKERFILE = "infrastructure/gateway/Dockerfile"


def container(resources: dict[str, Any]) -> dict[str, Any]:
    (definition,) = props(resources, "GatewayTaskDefinition")["ContainerDefinitions"]
    return dict(definition)


def test_delivery_queue_is_announced_by_assemble(resources: dict[str, Any]) -> None:
    env = props(resources, "AssembleFunction")["Environment"]["Variables"]
    assert env["ICHSEG_DELIVERY_QUEUE_URL"] == {"Ref": "DeliveryQueue"}
    senders = {o for o, s in statements(resources) if "sqs:SendMessage" in as_list(s["Action"])}
    delivery_senders = {
        o
        for o in senders
        if {"Fn::GetAtt": ["DeliveryQueue", "Arn"]} in allowed_resources(resources, o, "sqs:SendMessage")
    }
    assert delivery_senders == {"AssembleFunctionRole"}
    # no function consumes it: the gateway does
    for name in HANDLERS:
        for event in props(resources, name).get("Events", {}).values():
            assert event["Properties"].get("Queue") != {"Fn::GetAtt": ["DeliveryQueue", "Arn"]}, name
    assert allowed_resources(resources, "GatewayTaskRole", "sqs:ReceiveMessage") == [
        {"Fn::GetAtt": ["DeliveryQueue", "Arn"]}
    ]


def test_the_gateway_is_optional_and_only_with_its_image_and_network(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    found = {name: r["Type"] for name, r in resources.items() if name.startswith("Gateway")}
    assert found == {k: v for k, v in GATEWAY_RESOURCES.items() if k.startswith("Gateway")}
    for name, kind in GATEWAY_RESOURCES.items():
        assert resources[name]["Type"] == kind, name
        expected = (
            "GatewayTls" if name in ("GatewayDicomTlsListener", "GatewayLoadBalancerTlsIngress") else "DeployGateway"
        )
        assert resources[name].get("Condition") == expected, name
    conditions = template["Conditions"]
    deploy = json.dumps(conditions["DeployGateway"])
    for parameter in ("GatewayImageUri", "GatewayVpcId", "GatewayAllowedCidr", "GatewaySubnetIds"):
        assert parameter in deploy, parameter
        assert template["Parameters"][parameter]["Default"] == "", parameter  # the stack deploys without it
    assert conditions["GatewayTls"] == {
        "Fn::And": [
            {"Condition": "DeployGateway"},
            {"Fn::Not": [{"Fn::Equals": [{"Ref": "GatewayCertificateArn"}, ""]}]},
        ]
    }
    assert "GatewayNeedsNetwork" in template["Rules"]
    # what the pipeline itself needs of deliveries exists with or without the gateway
    for name in ("DeliveryQueue", "DeliveryDeadLetterQueue", "DeliveryDeadLetterAlarm"):
        assert "Condition" not in resources[name], name


def test_gateway_listens_on_104_and_dicom_tls_on_2762_only_with_a_certificate(resources: dict[str, Any]) -> None:
    balancer = props(resources, "GatewayLoadBalancer")
    assert (balancer["Type"], balancer["Scheme"]) == ("network", "internal")  # over VPN / Direct Connect
    assert balancer["Subnets"] == {"Ref": "GatewaySubnetIds"}
    tcp = props(resources, "GatewayDicomListener")
    assert (tcp["Protocol"], tcp["Port"]) == ("TCP", 104)
    assert "Certificates" not in tcp
    tls = props(resources, "GatewayDicomTlsListener")
    assert (tls["Protocol"], tls["Port"]) == ("TLS", 2762)
    assert tls["Certificates"] == [{"CertificateArn": {"Ref": "GatewayCertificateArn"}}]
    assert tls["SslPolicy"].startswith("ELBSecurityPolicy-TLS13-1-2")  # TLS 1.2/1.3 only
    for listener in (tcp, tls):
        assert listener["LoadBalancerArn"] == {"Ref": "GatewayLoadBalancer"}
        assert listener["DefaultActions"] == [{"Type": "forward", "TargetGroupArn": {"Ref": "GatewayTargetGroup"}}]
    group = props(resources, "GatewayTargetGroup")
    assert (group["Protocol"], group["Port"], group["TargetType"], group["HealthCheckProtocol"]) == (
        "TCP",
        11112,
        "ip",
        "TCP",
    )
    assert container(resources)["PortMappings"] == [
        {"ContainerPort": 11112, "Protocol": "tcp"},
        {"ContainerPort": 8080, "Protocol": "tcp"},
    ]
    service = props(resources, "GatewayService")
    assert service["LoadBalancers"] == [
        {"ContainerName": "gateway", "ContainerPort": 11112, "TargetGroupArn": {"Ref": "GatewayTargetGroup"}},
        {"ContainerName": "gateway", "ContainerPort": 8080, "TargetGroupArn": {"Ref": "GatewayStatusTargetGroup"}},
    ]
    assert service["NetworkConfiguration"]["AwsvpcConfiguration"]["AssignPublicIp"] == "DISABLED"
    assert {"GatewayDicomListener", "GatewayStatusListener"} <= set(resources["GatewayService"]["DependsOn"])


def test_the_status_page_is_served_on_8080_behind_the_same_internal_load_balancer(resources: dict[str, Any]) -> None:
    listener = props(resources, "GatewayStatusListener")
    assert (listener["Protocol"], listener["Port"], listener["LoadBalancerArn"]) == (
        "TCP",
        8080,
        {"Ref": "GatewayLoadBalancer"},
    )
    assert listener["DefaultActions"] == [{"Type": "forward", "TargetGroupArn": {"Ref": "GatewayStatusTargetGroup"}}]
    group = props(resources, "GatewayStatusTargetGroup")
    assert (group["Port"], group["HealthCheckProtocol"], group["HealthCheckPath"]) == (8080, "HTTP", "/healthz")
    environment = {e["Name"]: e["Value"] for e in container(resources)["Environment"]}
    assert environment["ICHSEG_GATEWAY_STATUS_PORT"] == "8080"
    # The load balancer's address is the VPC's: the page's own allow-list (private ranges) admits it,
    # and the hospital-only rule is the security group's (test_only_the_hospital_network_reaches_the_gateway).
    assert "ICHSEG_GATEWAY_STATUS_ALLOWED_NETWORKS" not in environment


def test_only_the_hospital_network_reaches_the_gateway(resources: dict[str, Any]) -> None:
    hospital = {"Ref": "GatewayAllowedCidr"}
    ingress = [*props(resources, "GatewayLoadBalancerSecurityGroup")["SecurityGroupIngress"]]
    ingress.append(props(resources, "GatewayLoadBalancerTlsIngress"))
    assert {(r["FromPort"], r["ToPort"]) for r in ingress} == {(104, 104), (2762, 2762), (8080, 8080)}
    assert all(r["CidrIp"] == hospital and r["IpProtocol"] == "tcp" for r in ingress)
    balancer_group = {"Fn::GetAtt": ["GatewayLoadBalancerSecurityGroup", "GroupId"]}
    task_group = {"Fn::GetAtt": ["GatewaySecurityGroup", "GroupId"]}
    assert props(resources, "GatewayLoadBalancer")["SecurityGroups"] == [balancer_group]
    tasks_in = props(resources, "GatewaySecurityGroup")["SecurityGroupIngress"]
    assert {(r["FromPort"], r["ToPort"], json.dumps(r["SourceSecurityGroupId"])) for r in tasks_in} == {
        (11112, 11112, json.dumps(balancer_group)),
        (8080, 8080, json.dumps(balancer_group)),
    }
    (spool_in,) = props(resources, "GatewaySpoolSecurityGroup")["SecurityGroupIngress"]
    assert (spool_in["FromPort"], spool_in["SourceSecurityGroupId"]) == (2049, task_group)
    # egress: the load balancer only to the tasks; the tasks to AWS APIs (443) and the hospital (its PACS)
    for name in ("GatewayLoadBalancerToTasks", "GatewayLoadBalancerToTasksStatus"):
        assert props(resources, name)["DestinationSecurityGroupId"] == task_group
    egress = props(resources, "GatewaySecurityGroup")["SecurityGroupEgress"]
    assert {(r["FromPort"], r["ToPort"], str(r["CidrIp"])) for r in egress} == {
        (443, 443, "0.0.0.0/0"),
        (1, 65535, str(hospital)),
    }
    # nothing reaches any of them from anywhere else
    for name in ("GatewayLoadBalancerSecurityGroup", "GatewaySecurityGroup", "GatewaySpoolSecurityGroup"):
        for rule in props(resources, name)["SecurityGroupIngress"]:
            assert rule.get("CidrIp") in (None, hospital) and "CidrIpv6" not in rule, (name, rule)
    ingress_resources = [n for n, r in resources.items() if r["Type"] == "AWS::EC2::SecurityGroupIngress"]
    assert ingress_resources == ["GatewayLoadBalancerTlsIngress"]


def test_gateway_task_role_touches_ingest_results_the_job_and_its_queue(resources: dict[str, Any]) -> None:
    role = "GatewayTaskRole"
    s3_resources = set()
    for stmt in role_statements(resources, role):
        actions = as_list(stmt["Action"])
        s3_actions = [a for a in actions if a.startswith("s3:")]
        assert not s3_actions or set(s3_actions) <= {
            "s3:PutObject",
            "s3:AbortMultipartUpload",
            "s3:GetObject",
            "s3:ListBucket",
        }
        for resource in as_list(stmt["Resource"]) if s3_actions else []:
            if resource == {"Fn::GetAtt": ["DataBucket", "Arn"]}:  # ListBucket: only under its prefixes
                assert stmt["Condition"] == {"StringLike": {"s3:prefix": ["ingest/*", "results/*"]}}
            else:
                s3_resources.add(sub_string(resource).removeprefix("${DataBucket.Arn}/"))
    assert s3_resources == {"ingest/*", "results/*"}
    puts = {sub_string(r) for r in allowed_resources(resources, role, "s3:PutObject")}
    assert puts == {"${DataBucket.Arn}/ingest/*"}  # it never writes results/
    gets = {sub_string(r) for r in allowed_resources(resources, role, "s3:GetObject")}
    assert gets == {"${DataBucket.Arn}/ingest/*", "${DataBucket.Arn}/results/*"}
    table = {"Fn::GetAtt": ["JobsTable", "Arn"]}
    dynamo = {a for s in role_statements(resources, role) for a in as_list(s["Action"]) if a.startswith("dynamodb:")}
    assert dynamo == {"dynamodb:GetItem", "dynamodb:UpdateItem"}
    assert allowed_resources(resources, role, "dynamodb:UpdateItem") == [table]
    sqs = {a for s in role_statements(resources, role) for a in as_list(s["Action"]) if a.startswith("sqs:")}
    assert {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"} <= sqs
    assert "sqs:SendMessage" not in sqs
    (metrics,) = [s for s in role_statements(resources, role) if "cloudwatch:PutMetricData" in as_list(s["Action"])]
    assert metrics["Condition"] == {"StringEquals": {"cloudwatch:namespace": "ichseg"}}
    # the spool only through its access point; the execution role only pulls and logs
    (mount,) = [
        s
        for s in role_statements(resources, role)
        if any(a.startswith("elasticfilesystem:") for a in as_list(s["Action"]))
    ]
    assert mount["Resource"] == {"Fn::GetAtt": ["GatewaySpool", "Arn"]}
    assert "elasticfilesystem:AccessPointArn" in mount["Condition"]["StringEquals"]
    execution = {a for s in role_statements(resources, "GatewayExecutionRole") for a in as_list(s["Action"])}
    assert not {a for a in execution if a.split(":")[0] in ("s3", "dynamodb", "sqs", "kms")}


def test_gateway_task_runs_as_a_user_on_an_encrypted_spool(resources: dict[str, Any]) -> None:
    task = props(resources, "GatewayTaskDefinition")
    assert (task["NetworkMode"], task["RequiresCompatibilities"], task["Cpu"], task["Memory"]) == (
        "awsvpc",
        ["FARGATE"],
        "1024",
        "2048",
    )
    assert task["TaskRoleArn"] == {"Fn::GetAtt": ["GatewayTaskRole", "Arn"]}
    assert task["ExecutionRoleArn"] == {"Fn::GetAtt": ["GatewayExecutionRole", "Arn"]}
    spec = container(resources)
    assert spec["Image"] == {"Ref": "GatewayImageUri"}
    assert spec["ReadonlyRootFilesystem"] is True and not spec["User"].startswith("0")
    assert spec["LogConfiguration"]["Options"]["awslogs-group"] == {"Ref": "GatewayLogGroup"}
    volumes = {v["Name"]: v for v in task["Volumes"]}
    assert set(volumes) == {"spool", "tmp"}  # tmp: scratch space beside the read-only root file system
    volume = volumes["spool"]
    efs = volume["EFSVolumeConfiguration"]
    assert (efs["FilesystemId"], efs["TransitEncryption"]) == ({"Ref": "GatewaySpool"}, "ENABLED")
    assert efs["AuthorizationConfig"] == {"AccessPointId": {"Ref": "GatewaySpoolAccessPoint"}, "IAM": "ENABLED"}
    env = {e["Name"]: e["Value"] for e in spec["Environment"]}
    assert spec["MountPoints"] == [
        {"SourceVolume": "spool", "ContainerPath": env["ICHSEG_GATEWAY_SPOOL_DIR"]},
        {"SourceVolume": "tmp", "ContainerPath": "/tmp"},
    ]
    spool = props(resources, "GatewaySpool")
    assert spool["Encrypted"] is True and spool["KmsKeyId"] == KEY_ARN
    # the access point's user is the container's, and the image's (infrastructure/gateway/Dockerfile)
    user = props(resources, "GatewaySpoolAccessPoint")["PosixUser"]
    assert spec["User"] == f"{user['Uid']}:{user['Gid']}"
    assert f"USER {user['Uid']}:{user['Gid']}" in (REPO / GATEWAY_DOCKERFILE).read_text()
    assert props(resources, "GatewayCluster")["ClusterSettings"] == [{"Name": "containerInsights", "Value": "enabled"}]
    # one task owns the spool: a deploy stops the old task before the new one starts
    deployment = props(resources, "GatewayService")["DeploymentConfiguration"]
    assert (deployment["MaximumPercent"], deployment["MinimumHealthyPercent"]) == (100, 0)


def test_gateway_container_environment_is_what_the_gateway_reads(resources: dict[str, Any]) -> None:
    from gateway.settings import GatewaySettings

    class Recording(dict[str, str]):
        """An environment that remembers every name asked for."""

        asked: set[str]

        def get(self, key: str, default: Any = None) -> Any:
            self.asked.add(key)
            return super().get(key, default)

        def __getitem__(self, key: str) -> str:
            self.asked.add(key)
            return super().__getitem__(key)

        def __contains__(self, key: object) -> bool:
            self.asked.add(str(key))
            return super().__contains__(key)

    env = {e["Name"]: e["Value"] for e in container(resources)["Environment"]}
    secrets = {s["Name"] for s in container_secrets(resources)}
    recording = Recording({"ICHSEG_GATEWAY_SPOOL_DIR": "/spool", "ICHSEG_BUCKET": "b"})
    recording.asked = set()
    GatewaySettings.from_env(recording)
    read_by_cli = set(re.findall(r'"(ICHSEG_\w+)"', (REPO / "gateway" / "cli.py").read_text()))
    unknown = {n for n in [*env, *secrets] if n.startswith("ICHSEG_")} - recording.asked - read_by_cli
    assert not unknown, f"template.yaml sets variables the gateway never reads: {unknown}"
    assert secrets and secrets <= recording.asked
    for name in (
        "ICHSEG_GATEWAY_AE_TITLE",
        "ICHSEG_GATEWAY_PORT",
        "ICHSEG_GATEWAY_SPOOL_DIR",
        "ICHSEG_GATEWAY_DESTINATIONS",
        "ICHSEG_BUCKET",
        "ICHSEG_TABLE",
        "ICHSEG_DELIVERY_QUEUE_URL",
        "ICHSEG_MAX_RECEIVE_COUNT",
    ):
        assert name in env and name in recording.asked, name
    assert env["ICHSEG_GATEWAY_PORT"] == "11112"
    assert env["ICHSEG_GATEWAY_AE_TITLE"] == {"Ref": "GatewayAeTitle"}
    assert env["ICHSEG_GATEWAY_DESTINATIONS"] == {"Ref": "GatewayDestinations"}
    assert env["ICHSEG_GATEWAY_HL7_DESTINATIONS"] == {"Ref": "GatewayHl7Destinations"}
    assert env["ICHSEG_GATEWAY_FHIR_DESTINATIONS"] == {"Ref": "GatewayFhirDestinations"}
    assert env["ICHSEG_BUCKET"] == {"Ref": "DataBucket"} and env["ICHSEG_TABLE"] == {"Ref": "JobsTable"}
    assert env["ICHSEG_DELIVERY_QUEUE_URL"] == {"Ref": "DeliveryQueue"}
    # the gateway's last receive fails the delivery: the delivery queue's own redrive count
    assert env["ICHSEG_MAX_RECEIVE_COUNT"] == {"Ref": "DeliveryMaxReceiveCount"}
    assert env["POWERTOOLS_METRICS_NAMESPACE"] == "ichseg"  # DeliveryFailuresAlarm's namespace


def container_secrets(resources: dict[str, Any]) -> list[dict[str, Any]]:
    """The gateway container's ``Secrets`` under every condition (each entry's own Fn::If resolved)."""
    found: list[dict[str, Any]] = []
    for listing in branches(container(resources).get("Secrets", {"Ref": "AWS::NoValue"})):
        for entry in listing:
            found.extend(branches(entry))
    return found


def test_gateway_delivery_tls_secrets_are_optional_and_only_the_execution_role_reads_them(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    parameters, conditions = template["Parameters"], template["Conditions"]
    secret_arn = re.compile(parameters["GatewayDeliveryCaSecretArn"]["AllowedPattern"])
    for name in ("GatewayDeliveryCaSecretArn", "GatewayClientCertificateSecretArn"):
        assert parameters[name]["Default"] == "" and parameters[name]["AllowedPattern"] == secret_arn.pattern
    # the full ARN (its 6-character suffix), so that IAM's exact resource matches and :key:: can follow
    assert secret_arn.fullmatch("arn:aws:secretsmanager:eu-west-1:123456789012:secret:ichseg/pacs-ca-AbC123")
    for refused in ("arn:aws:secretsmanager:eu-west-1:123456789012:secret:ichseg/pacs-ca", "pacs-ca", "arn:x:y"):
        assert not secret_arn.fullmatch(refused), refused
    for condition, parameter in (
        ("GatewayDeliveryCaSecret", "GatewayDeliveryCaSecretArn"),
        ("GatewayClientCertificateSecret", "GatewayClientCertificateSecretArn"),
    ):
        assert conditions[condition]["Fn::And"][0] == {"Condition": "DeployGateway"}
        assert conditions[condition]["Fn::And"][1] == {"Fn::Not": [{"Fn::Equals": [{"Ref": parameter}, ""]}]}
    assert conditions["GatewayHasSecrets"] == {
        "Fn::Or": [{"Condition": "GatewayDeliveryCaSecret"}, {"Condition": "GatewayClientCertificateSecret"}]
    }

    # No secrets at all without either parameter; each entry only under its own condition.
    secrets = container(resources)["Secrets"]["Fn::If"]
    assert secrets[0] == "GatewayHasSecrets" and secrets[2] == {"Ref": "AWS::NoValue"}
    entries = {entry["Fn::If"][1]["Name"]: entry["Fn::If"] for entry in secrets[1]}
    assert {name: (cond, otherwise) for name, (cond, _, otherwise) in entries.items()} == {
        "ICHSEG_GATEWAY_DELIVERY_TLS_CA_PEM": ("GatewayDeliveryCaSecret", {"Ref": "AWS::NoValue"}),
        "ICHSEG_GATEWAY_TLS_CERTIFICATE_PEM": ("GatewayClientCertificateSecret", {"Ref": "AWS::NoValue"}),
        "ICHSEG_GATEWAY_TLS_KEY_PEM": ("GatewayClientCertificateSecret", {"Ref": "AWS::NoValue"}),
    }
    value_from = {entry["Name"]: entry["ValueFrom"] for entry in container_secrets(resources)}
    assert value_from == {
        "ICHSEG_GATEWAY_DELIVERY_TLS_CA_PEM": {"Ref": "GatewayDeliveryCaSecretArn"},
        "ICHSEG_GATEWAY_TLS_CERTIFICATE_PEM": {"Fn::Sub": "${GatewayClientCertificateSecretArn}:certificate::"},
        "ICHSEG_GATEWAY_TLS_KEY_PEM": {"Fn::Sub": "${GatewayClientCertificateSecretArn}:key::"},
    }
    # The PEM never sits in the plain environment (visible in the task definition).
    assert not any(e["Name"].endswith("_PEM") for e in container(resources)["Environment"])

    # ECS reads them with the execution role, each statement under its secret's condition, exact ARN.
    (policy,) = props(resources, "GatewayExecutionRole")["Policies"]
    conditional = {
        stmt["Fn::If"][0]: stmt["Fn::If"] for stmt in policy["PolicyDocument"]["Statement"] if "Fn::If" in stmt
    }
    assert set(conditional) == {"GatewayDeliveryCaSecret", "GatewayClientCertificateSecret"}
    for condition, parameter in (
        ("GatewayDeliveryCaSecret", "GatewayDeliveryCaSecretArn"),
        ("GatewayClientCertificateSecret", "GatewayClientCertificateSecretArn"),
    ):
        _, statement, otherwise = conditional[condition]
        assert otherwise == {"Ref": "AWS::NoValue"}
        assert (statement["Effect"], statement["Action"], statement["Resource"]) == (
            "Allow",
            "secretsmanager:GetSecretValue",
            {"Ref": parameter},
        )
    assert allowed_resources(resources, "GatewayExecutionRole", "secretsmanager:GetSecretValue") == [
        {"Ref": "GatewayDeliveryCaSecretArn"},
        {"Ref": "GatewayClientCertificateSecretArn"},
    ]
    # the task role (the gateway's own code) reads no secret: ECS hands them over at start
    assert not allowed_resources(resources, "GatewayTaskRole", "secretsmanager:GetSecretValue")


def test_delivery_alarms_reach_the_topic(resources: dict[str, Any]) -> None:
    failures = props(resources, "DeliveryFailuresAlarm")
    (query,) = failures["Metrics"]
    assert re.fullmatch(r"SELECT SUM\(DeliveryFailures\) FROM ichseg", query["Expression"])
    assert (failures["Threshold"], failures["ComparisonOperator"]) == (1, "GreaterThanOrEqualToThreshold")
    assert failures["TreatMissingData"] == "notBreaching"
    dlq = props(resources, "DeliveryDeadLetterAlarm")
    assert dlq["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": ["DeliveryDeadLetterQueue", "QueueName"]}}
    ]
    for alarm in (failures, dlq):
        assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]
    # the metric is the one the gateway counts
    assert 'add_metric("DeliveryFailures"' in (REPO / "gateway" / "delivery.py").read_text()


def test_gateway_dockerfile() -> None:
    text = (REPO / GATEWAY_DOCKERFILE).read_text()
    assert re.search(r"^FROM \S+python:3\.11", text, re.M)
    assert "requirements/gateway.txt" in text and (REPO / "requirements" / "gateway.txt").is_file()
    assert "COPY ichseg/" in text and "COPY gateway/" in text
    assert re.search(r"^USER (?!0|root)\S+", text, re.M)  # not root
    assert 'ENTRYPOINT ["python", "-m", "gateway"]' in text
    assert re.search(r"^EXPOSE 11112 2762$", text, re.M)
    patterns = [
        line.strip()
        for line in (REPO / f"{GATEWAY_DOCKERFILE}.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*" and {"!requirements/", "!ichseg/", "!gateway/"} <= set(patterns)


def test_gateway_outputs(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    assert outputs["GatewayAddress"] == {
        "Condition": "DeployGateway",
        "Description": outputs["GatewayAddress"]["Description"],
        "Value": {"Fn::GetAtt": ["GatewayLoadBalancer", "DNSName"]},
    }
    assert outputs["GatewayDicomPort"]["Value"] == "104"
    assert (outputs["GatewayDicomTlsPort"]["Value"], outputs["GatewayDicomTlsPort"]["Condition"]) == (
        "2762",
        "GatewayTls",
    )
    assert outputs["GatewayAeTitle"]["Value"] == {"Ref": "GatewayAeTitle"}
    assert outputs["GatewayStatusUrl"]["Value"] == {"Fn::Sub": "http://${GatewayLoadBalancer.DNSName}:8080/"}
    assert outputs["DeliveryQueueUrl"]["Value"] == {"Ref": "DeliveryQueue"}


def test_a_failed_hospital_job_alarms(resources: dict[str, Any]) -> None:
    # Nothing goes back to the PACS for a FAILED hospital job: ops hear of each one.
    alarm = props(resources, "HospitalJobsFailedAlarm")
    (query,) = alarm["Metrics"]
    assert query["Expression"] == "SELECT SUM(HospitalJobsFailed) FROM ichseg"
    assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (1, "GreaterThanOrEqualToThreshold")
    assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}] and "Condition" not in resources["HospitalJobsFailedAlarm"]
    assert 'add_metric("HospitalJobsFailed"' in (REPO / "ichseg" / "pipeline" / "failures.py").read_text()


# --------------------------------------------------------------------------------------------------
# The Firebase copy's retries (issue 19, item 11): a queue of its own with a DLQ and an alarm, and a
# least-privilege function that reads results/, the Firebase secret and the job row.


def test_mirror_queue_is_fed_by_assemble_and_read_by_the_mirror_function_only(resources: dict[str, Any]) -> None:
    queue = {"Fn::GetAtt": ["MirrorQueue", "Arn"]}
    senders = {o for o, s in statements(resources) if queue in allowed_resources(resources, o, "sqs:SendMessage")}
    assert senders == {"AssembleFunctionRole"}
    receivers = {o for o, _ in statements(resources) if queue in allowed_resources(resources, o, "sqs:ReceiveMessage")}
    assert receivers == {"MirrorFunctionRole"}
    consumers = [
        name
        for name, fn in of_type(resources, "AWS::Serverless::Function").items()
        for event in fn["Properties"].get("Events", {}).values()
        if event["Type"] == "SQS" and event["Properties"]["Queue"] == queue
    ]
    assert consumers == ["MirrorFunction"]
    assert props(resources, "AssembleFunction")["Environment"]["Variables"]["ICHSEG_MIRROR_QUEUE_URL"] == {
        "Ref": "MirrorQueue"
    }
    env = props(resources, "MirrorFunction")["Environment"]["Variables"]
    # the stage sets each failed message's backoff on its own queue, and its last receive is the
    # mirror queue's redrive count (not the pipeline's MaxReceiveCount)
    assert env["ICHSEG_MIRROR_QUEUE_URL"] == {"Ref": "MirrorQueue"}
    assert env["ICHSEG_MAX_RECEIVE_COUNT"] == {"Ref": "MirrorMaxReceiveCount"}
    assert props(resources, "MirrorQueue")["RedrivePolicy"]["maxReceiveCount"] == {"Ref": "MirrorMaxReceiveCount"}
    assert env["ICHSEG_FIREBASE_CREDENTIALS_SECRET_ARN"] == {"Ref": "FirebaseCredentialsSecretArn"}


def test_mirror_retries_span_hours_of_an_outage(template: dict[str, Any]) -> None:
    from ichseg.pipeline.config import PipelineConfig

    receives = int(template["Parameters"]["MirrorMaxReceiveCount"]["Default"])
    base = PipelineConfig().mirror_backoff_seconds
    # the first retry waits `base` (the message's delay), each failed one doubles it
    covered = sum(base * 2**n for n in range(receives))
    assert 3 * 3600 <= covered <= 12 * 3600
    assert base <= 900  # SQS's longest message delay


def test_mirror_function_is_least_privilege(resources: dict[str, Any]) -> None:
    role = "MirrorFunctionRole"
    actions = {a for s in role_statements(resources, role) if s["Effect"] == "Allow" for a in as_list(s["Action"])}
    assert actions == {
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "xray:PutTraceSegments",
        "xray:PutTelemetryRecords",
        "kms:Decrypt",
        "kms:GenerateDataKey",
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
        "sqs:ChangeMessageVisibility",
        "s3:GetObject",
        "s3:ListBucket",
        "dynamodb:GetItem",
        "dynamodb:UpdateItem",
        "secretsmanager:GetSecretValue",
    }
    assert allowed_resources(resources, role, "s3:GetObject") == [{"Fn::Sub": "${DataBucket.Arn}/results/*"}]
    (listing,) = [s for s in role_statements(resources, role) if "s3:ListBucket" in as_list(s["Action"])]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["results/*"]}}
    assert allowed_resources(resources, role, "dynamodb:UpdateItem") == [{"Fn::GetAtt": ["JobsTable", "Arn"]}]
    assert allowed_resources(resources, role, "secretsmanager:GetSecretValue") == [
        {"Ref": "FirebaseCredentialsSecretArn"}
    ]
    (secret,) = [s for s in props(resources, role)["Policies"][0]["PolicyDocument"]["Statement"] if "Fn::If" in s]
    assert secret["Fn::If"][0] == "HasFirebaseSecret"  # no statement at all without a secret
    assert allowed_resources(resources, role, "logs:PutLogEvents") == [
        {"Fn::GetAtt": ["MirrorFunctionLogGroup", "Arn"]}
    ]


def test_a_given_up_mirror_alarms(resources: dict[str, Any]) -> None:
    alarm = props(resources, "MirrorDeadLetterAlarm")
    assert alarm["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": ["MirrorDeadLetterQueue", "QueueName"]}}
    ]
    assert alarm["MetricName"] == "ApproximateNumberOfMessagesVisible" and alarm["Threshold"] == 0
    assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}] and alarm["OKActions"] == [{"Ref": "AlarmTopic"}]
    assert props(resources, "MirrorDeadLetterQueue")["MessageRetentionPeriod"] == 1209600
    errors = props(resources, "MirrorErrorsAlarm")
    assert errors["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": "MirrorFunction"}}]


def test_mirror_outputs(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    assert outputs["MirrorQueueUrl"]["Value"] == {"Ref": "MirrorQueue"}
    assert outputs["MirrorDeadLetterQueueArn"]["Value"] == {"Fn::GetAtt": ["MirrorDeadLetterQueue", "Arn"]}
    assert outputs["MirrorDeadLetterQueueUrl"]["Value"] == {"Ref": "MirrorDeadLetterQueue"}


def test_rollouts_are_guarded_and_roll_back_on_alarms(template: dict[str, Any], resources: dict[str, Any]) -> None:
    # Lambda: every change is a version behind the alias "live", shifted by CodeDeploy and rolled
    # back when the function's own errors alarm fires.
    function_globals = template["Globals"]["Function"]
    assert function_globals["AutoPublishAlias"] == "live"
    assert function_globals["DeploymentPreference"]["Type"] == {"Ref": "LambdaDeploymentType"}
    for name in HANDLERS:
        alarms = props(resources, name)["DeploymentPreference"]["Alarms"]
        assert alarms == [{"Ref": name.replace("Function", "ErrorsAlarm")}], name
        alarm = props(resources, alarms[0]["Ref"])
        assert alarm["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": name}}]
    # SageMaker: blue/green with a bake period, rolled back by the endpoint's 5xx alarm, which names
    # the endpoint by the same name the endpoint is given (no circular reference).
    endpoint = props(resources, "SegmentationEndpoint")
    policy = endpoint["DeploymentConfig"]["BlueGreenUpdatePolicy"]
    assert policy["TrafficRoutingConfiguration"]["WaitIntervalInSeconds"] == {"Ref": "EndpointBakeSeconds"}
    assert endpoint["DeploymentConfig"]["AutoRollbackConfiguration"]["Alarms"] == [
        {"AlarmName": {"Ref": "EndpointRollbackAlarm"}}
    ]
    rollback = props(resources, "EndpointRollbackAlarm")
    assert rollback["MetricName"] == "Invocation5XXErrors"
    assert rollback["Dimensions"][0]["Value"] == endpoint["EndpointName"]


@pytest.mark.parametrize(
    ("parameter", "variable", "value"),
    [
        ("GatewayDestinations", "ICHSEG_GATEWAY_DESTINATIONS", "CT1=PACS@10.0.0.5:104"),
        ("GatewayDestinations", "ICHSEG_GATEWAY_DESTINATIONS", "CT1=PACS@h:2762?tls&overlay,CT2=P2@h:104?overlay"),
        ("GatewayDestinations", "ICHSEG_GATEWAY_DESTINATIONS", "CT1=PACS@h:104?ssl"),
        ("GatewayDestinations", "ICHSEG_GATEWAY_DESTINATIONS", "CT1=PACS@h"),
        ("GatewayDefaultDestination", "ICHSEG_GATEWAY_DEFAULT_DESTINATION", "PACS@h:104?overlay"),
        ("GatewayDefaultDestination", "ICHSEG_GATEWAY_DEFAULT_DESTINATION", "PACS@h:104?sc"),
        ("GatewayHl7Destinations", "ICHSEG_GATEWAY_HL7_DESTINATIONS", "CT1=RIS^STBRIGID@10.0.0.7:2575,CT2=h:2575"),
        ("GatewayHl7Destinations", "ICHSEG_GATEWAY_HL7_DESTINATIONS", "CT1=ris"),
        ("GatewayFhirDestinations", "ICHSEG_GATEWAY_FHIR_DESTINATIONS", "CT1=https://ehr.example/fhir/r4"),
        ("GatewayFhirDestinations", "ICHSEG_GATEWAY_FHIR_DESTINATIONS", "CT1=http://ehr.example/fhir"),
    ],
)
def test_a_gateway_parameter_the_template_accepts_is_one_the_gateway_reads(
    template: dict[str, Any], parameter: str, variable: str, value: str
) -> None:
    """The template's pattern and the gateway's parser agree: CloudFormation refuses at deploy time
    exactly what would stop the task at start."""
    from gateway.settings import GatewaySettings, SettingsError

    accepted = re.fullmatch(template["Parameters"][parameter]["AllowedPattern"], value) is not None
    try:
        GatewaySettings.from_env({"ICHSEG_GATEWAY_SPOOL_DIR": "/spool", variable: value})
        read = True
    except SettingsError:
        read = False
    assert accepted == read, (value, accepted, read)
