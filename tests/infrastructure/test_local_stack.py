"""The local stack is template.yaml on one machine: what runs in moto and the worker processes is
what the template declares, and a change in the template changes the local stack."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from infrastructure.cloud_template import TEMPLATE, CloudTemplate
from infrastructure.local_stack import LocalStack, StackSettings, stack_command


def test_queues_match_the_template(stack: LocalStack) -> None:
    sqs = stack.aws("sqs")
    template = stack.template
    assert set(stack.queues) == set(template.queues) == {"ingest", "segment", "assemble", "mirror", "delivery"}
    for name, declared in template.queues.items():
        info = stack.queues[name]
        attributes = sqs.get_queue_attributes(QueueUrl=info.url, AttributeNames=["All"])["Attributes"]
        expected_visibility = stack.settings.visibility_timeout.get(name, declared.visibility_timeout)
        assert int(attributes["VisibilityTimeout"]) == expected_visibility
        assert int(attributes["MessageRetentionPeriod"]) == declared.retention_seconds
        redrive = json.loads(attributes["RedrivePolicy"])
        dlq_arn = sqs.get_queue_attributes(QueueUrl=info.dlq_url, AttributeNames=["QueueArn"])["Attributes"]
        assert redrive == {"maxReceiveCount": declared.max_receive_count, "deadLetterTargetArn": dlq_arn["QueueArn"]}
        dlq = sqs.get_queue_attributes(QueueUrl=info.dlq_url, AttributeNames=["MessageRetentionPeriod"])
        assert int(dlq["Attributes"]["MessageRetentionPeriod"]) == declared.dead_letter_retention_seconds


def test_jobs_table_matches_the_template(stack: LocalStack) -> None:
    declared = stack.template.table
    dynamodb = stack.aws("dynamodb")
    table = dynamodb.describe_table(TableName=stack.settings.table)["Table"]
    assert table["KeySchema"] == declared["KeySchema"]
    assert sorted(table["AttributeDefinitions"], key=str) == sorted(declared["AttributeDefinitions"], key=str)
    indexes = {i["IndexName"]: (i["KeySchema"], i["Projection"]) for i in table["GlobalSecondaryIndexes"]}
    assert indexes == {i["IndexName"]: (i["KeySchema"], i["Projection"]) for i in declared["GlobalSecondaryIndexes"]}
    ttl = dynamodb.describe_time_to_live(TableName=stack.settings.table)["TimeToLiveDescription"]
    assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == (
        "ENABLED",
        declared["TimeToLiveSpecification"]["AttributeName"],
    )


def test_bucket_notifications_and_lifecycle_match_the_template(stack: LocalStack) -> None:
    s3 = stack.aws("s3")
    configured = s3.get_bucket_notification_configuration(Bucket=stack.settings.bucket)["QueueConfigurations"]
    seen = {(c["Filter"]["Key"]["FilterRules"][0]["Value"], c["QueueArn"], tuple(c["Events"])) for c in configured}
    assert seen == {(n.prefix, stack.queues[n.queue].arn, n.events) for n in stack.template.bucket_notifications}
    rules = s3.get_bucket_lifecycle_configuration(Bucket=stack.settings.bucket)["Rules"]
    declared = {r["ID"]: r for r in stack.template.lifecycle_rules()}
    assert {r["ID"] for r in rules} == set(declared) and "expire-work" in declared
    for rule in rules:
        assert rule.get("Expiration") == declared[rule["ID"]].get("Expiration")
        assert rule.get("NoncurrentVersionExpiration") == declared[rule["ID"]].get("NoncurrentVersionExpiration")
    # versioned, as in the cloud, so the noncurrent-version expiry above has versions to act on
    versioning = s3.get_bucket_versioning(Bucket=stack.settings.bucket)
    assert versioning.get("Status") == stack.template.bucket_versioning == "Enabled"
    assert "NoncurrentVersionExpiration" in declared["expire-noncurrent-versions"]


def test_functions_run_with_the_templates_handler_sizing_and_environment(stack: LocalStack) -> None:
    assert set(stack.functions) == set(stack.template.functions)
    for name, declared in stack.template.functions.items():
        function = stack.functions[name]
        assert (function.spec.handler, function.spec.timeout_seconds, function.spec.memory_mb) == (
            declared.handler,
            declared.timeout_seconds,
            declared.memory_mb,
        )
        expected = stack.template.function_environment(name, stack.resolve_resource)
        overridden = set(stack.settings.environment)
        assert {k: v for k, v in function.environment.items() if k in expected and k not in overridden} == {
            k: v for k, v in expected.items() if k not in overridden
        }
    # the values that tie the functions to the resources are the local resources
    split_env = stack.functions["split"].environment
    assert split_env["ICHSEG_SEGMENT_QUEUE_URL"] == stack.queues["segment"].url
    assert split_env["ICHSEG_TABLE"] == stack.settings.table
    assert stack.functions["segment"].environment["ICHSEG_ENDPOINT_NAME"] == stack.settings.endpoint_name
    assert "ICHSEG_ENDPOINT_NAME" not in stack.functions["split"].environment  # only segment calls the endpoint
    # the Firebase copy's retries: assemble sends to the local mirror queue, the mirror function reads it
    # (a pump, as the template's event source) with the mirror queue's own redrive count as its last receive
    mirror_env = stack.functions["mirror"].environment
    assert stack.functions["assemble"].environment["ICHSEG_MIRROR_QUEUE_URL"] == stack.queues["mirror"].url
    assert mirror_env["ICHSEG_MIRROR_QUEUE_URL"] == stack.queues["mirror"].url
    assert int(mirror_env["ICHSEG_MAX_RECEIVE_COUNT"]) == stack.template.queues["mirror"].max_receive_count
    assert (
        stack.template.functions["mirror"].sqs is not None and stack.template.functions["mirror"].sqs.queue == "mirror"
    )


def test_a_change_in_the_template_changes_the_local_stack(tmp_path: Path) -> None:
    document = CloudTemplate.load().document
    resources = document["Resources"]
    resources["SegmentQueue"]["Properties"]["VisibilityTimeout"] = 42
    resources["AssembleFunction"]["Properties"]["MemorySize"] = 4096
    resources["AssembleFunction"]["Properties"]["Timeout"] = 200
    resources["SplitFunction"]["Properties"]["Events"]["Ingest"]["Properties"]["BatchSize"] = 5
    document["Globals"]["Function"]["Environment"]["Variables"]["ICHSEG_NEW_SETTING"] = "on"
    document["Parameters"]["MaxReceiveCount"]["Default"] = 5
    document["Parameters"]["DeliveryMaxReceiveCount"]["Default"] = 7
    document["Parameters"]["MirrorMaxReceiveCount"]["Default"] = 9
    changed = tmp_path / "template.yaml"
    changed.write_text(_dump_with_tags(document))

    template = CloudTemplate.load(changed)
    assert template.queues["segment"].visibility_timeout == 42
    assert {q.name: q.max_receive_count for q in template.queues.values()} == {
        "ingest": 5,
        "segment": 5,
        "assemble": 5,
        "mirror": 9,
        "delivery": 7,
    }
    assert template.functions["split"].sqs is not None and template.functions["split"].sqs.batch_size == 5
    assert template.functions["watchdog"].environment["ICHSEG_NEW_SETTING"] == "on"
    specs = {s.name: s for s in LocalStack(StackSettings(template=changed))._specs()}
    assert (specs["assemble"].memory_mb, specs["assemble"].timeout_seconds) == (4096, 200)
    original = {s.name: s for s in LocalStack(StackSettings(template=TEMPLATE))._specs()}
    assert (original["assemble"].memory_mb, original["assemble"].timeout_seconds) == (3008, 300)


def _dump_with_tags(document: dict[str, Any]) -> str:
    """YAML of the long-form template (``{"Ref": X}`` is valid CloudFormation YAML too)."""
    return yaml.safe_dump(document, sort_keys=False)


# --------------------------------------------------------------------------------------------------
# Hospital deliveries and the DICOM gateway


def test_delivery_queue_is_the_templates_and_no_function_is_pumped_from_it(stack: LocalStack) -> None:
    declared = stack.template.queues["delivery"]
    assert (declared.logical_id, declared.dead_letter_logical_id) == ("DeliveryQueue", "DeliveryDeadLetterQueue")
    info = stack.queues["delivery"]
    sqs = stack.aws("sqs")
    attributes = sqs.get_queue_attributes(QueueUrl=info.url, AttributeNames=["All"])["Attributes"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=info.dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    assert json.loads(attributes["RedrivePolicy"]) == {
        "maxReceiveCount": declared.max_receive_count,
        "deadLetterTargetArn": dlq_arn,
    }
    assert int(attributes["VisibilityTimeout"]) == stack.settings.visibility_timeout.get(
        "delivery", declared.visibility_timeout
    )
    # the gateway consumes it, not a function: no event source, no pump
    assert all(f.sqs is None or f.sqs.queue != "delivery" for f in stack.template.functions.values())
    pumps = {t.name for t in threading.enumerate() if t.name.startswith("ichseg-pump-")}
    assert pumps == {f"ichseg-pump-{q}" for q in ("ingest", "segment", "assemble", "mirror")}
    # assemble announces DONE hospital jobs on it (template: ICHSEG_DELIVERY_QUEUE_URL: !Ref DeliveryQueue)
    assert stack.functions["assemble"].environment["ICHSEG_DELIVERY_QUEUE_URL"] == info.url
    assert stack.resolve_resource("DeliveryQueue", None) == info.url


def test_gateway_environment_is_the_templates_task_definition_with_local_addresses(
    stack: LocalStack, tmp_path: Path
) -> None:
    from gateway.settings import Destination, GatewaySettings

    local = LocalStack(replace(stack.settings, state_dir=tmp_path, pacs="ORTHANC@127.0.0.1:4242"))
    local.queues = stack.queues  # resolved as the running stack resolves them
    declared = stack.template.container_environment("GatewayTaskDefinition", "gateway", stack.resolve_resource)
    env = local.gateway_environment()
    assert set(declared) <= set(env)
    for name in ("ICHSEG_BUCKET", "ICHSEG_TABLE", "ICHSEG_DELIVERY_QUEUE_URL", "ICHSEG_MAX_RECEIVE_COUNT"):
        assert env[name] == declared[name], name
    settings = GatewaySettings.from_env(env)
    assert (settings.bucket, settings.table) == (stack.settings.bucket, stack.settings.table)
    assert settings.delivery_queue_url == stack.queues["delivery"].url
    assert settings.delivery_attempts == stack.template.queues["delivery"].max_receive_count
    assert settings.default_destination == Destination("ORTHANC", "127.0.0.1", 4242)
    assert (settings.ae_title, settings.host, settings.port) == ("ICHSEG", "127.0.0.1", 0)
    fixed = LocalStack(replace(stack.settings, state_dir=tmp_path, gateway_port=11112))
    fixed.queues = stack.queues
    assert GatewaySettings.from_env(fixed.gateway_environment()).port == 11112  # ichseg stack --gateway-port
    assert settings.spool_dir == tmp_path / "gateway-spool"
    assert settings.idle_seconds == stack.settings.gateway_idle_seconds


@pytest.fixture(scope="module")
def gateway_stack(stack: LocalStack) -> Iterator[LocalStack]:
    """The session's stack with its gateway: as configured (tests with a PACS set ``pacs``), else
    started for this module (one moto per process: a second stack would share its queues)."""
    if stack.gateway is not None:
        yield stack
        return
    stack.start_gateway()
    try:
        yield stack
    finally:
        stack.stop_gateway()


def test_the_gateway_answers_c_echo_where_describe_says(gateway_stack: LocalStack) -> None:
    described = gateway_stack.describe()["dicom_gateway"]
    assert set(described) == {"ae_title", "host", "port", "destination", "status_url"}
    assert described["ae_title"] == gateway_stack.settings.gateway_ae_title == "ICHSEG"
    assert described["host"] == "127.0.0.1" and isinstance(described["port"], int) and described["port"] > 0
    assert described["destination"] == gateway_stack.settings.pacs
    echoscu = shutil.which("echoscu")
    assert echoscu, "dcmtk's echoscu is not installed (make dicom-tools)"
    command = [echoscu, "-aet", "TEST", "-aec", described["ae_title"], described["host"], str(described["port"])]
    echo = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert echo.returncode == 0, echo.stdout + echo.stderr
    # The hospital's status page answers where describe says, from this (loopback) address.
    assert described["status_url"].startswith("http://127.0.0.1:")
    status = requests.get(described["status_url"] + "status.json", timeout=30).json()
    assert status["gateway"]["dicom_port"] == described["port"]
    # Its log is in the stack's log folder with the functions' (written before start() returned).
    log = (gateway_stack.log_dir / "gateway.log").read_text()
    assert f"listening on 127.0.0.1:{described['port']}" in log


def test_stack_command_refuses_a_malformed_pacs_before_starting(capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(state_dir="unused", pacs="ORTHANC-127.0.0.1-4242", gateway=False)
    assert stack_command(args) == 2
    assert "--pacs" in capsys.readouterr().err


def test_ichseg_stack_takes_pacs_and_gateway_flags() -> None:
    from infrastructure.cli import add_commands

    parser = argparse.ArgumentParser(prog="ichseg")
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["stack", "--pacs", "ORTHANC@127.0.0.1:4242", "--gateway", "--gateway-port", "11112"])
    assert (args.pacs, args.gateway, args.gateway_port) == ("ORTHANC@127.0.0.1:4242", True, 11112)
    plain = parser.parse_args(["stack"])
    assert (plain.pacs, plain.gateway, plain.gateway_port) == (None, False, 0)


def test_the_commands_ichseg_stack_suggests_work_as_printed(stack: LocalStack) -> None:
    from infrastructure.local_stack import try_commands

    token, start = try_commands(stack)
    assert shutil.which("curl"), "curl is not installed"
    run = subprocess.run(["bash", "-c", f"{token}\n{start}"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    ticket = json.loads(run.stdout)
    assert ticket["state"] == "RECEIVED" and ticket["upload"]["url"], ticket
