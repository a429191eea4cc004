"""ACLs on a cluster of two agents sharing PostgreSQL metadata: `streamctl acl add --metadata
postgresql://...` bootstraps both, and an ACL created or deleted through one agent applies on
the other within its refresh (1 s; asserted under 5 s to allow for a loaded machine)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable

from streamhouse.kafka import messages as m
from streamhouse.testing import Cluster, kafka_call, wait_until

ANON = "User:ANONYMOUS"
TOPIC_TYPE, CLUSTER_TYPE = 2, 4
LITERAL = 3
DESCRIBE, CREATE, ALTER = 8, 5, 7
ALLOW = 3
TOPIC_AUTHORIZATION_FAILED, CLUSTER_AUTHORIZATION_FAILED = 29, 31


def metadata_error(address: str, topic: str) -> int:
    request = m.MetadataRequest(
        topics=[m.MetadataRequest.MetadataRequestTopic(name=topic)],
        allow_auto_topic_creation=False,
    )
    response = kafka_call(address, 3, 9, request)
    return int(response.topics[0].error_code)


def describe_acls_error(address: str) -> int:
    request = m.DescribeAclsRequest(
        resource_type_filter=1,
        resource_name_filter=None,
        pattern_type_filter=1,
        principal_filter=None,
        host_filter=None,
        operation=1,
        permission_type=1,
    )
    return int(kafka_call(address, 29, 1, request).error_code)


def test_acls_reach_every_agent(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(2, env={"STREAMHOUSE_AUTHORIZER": "acl"})
    first, second = cluster.kafka_addresses
    assert describe_acls_error(second) == CLUSTER_AUTHORIZATION_FAILED
    dsn = cluster[0].settings.metadata
    added = subprocess.run(
        [sys.executable, "-m", "streamhouse.streamctl", "acl", "add", "--metadata", dsn]
        + ["--allow-principal", ANON, "--cluster"]
        + ["--operation", "Alter", "--operation", "Describe", "--operation", "Create"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=cluster[0].env,
    )
    assert added.returncode == 0, added.stderr
    for address in (first, second):
        wait_until(lambda a=address: describe_acls_error(a) == 0, 10, f"{address} allows ANON")

    topic = f"acl-cluster-{uuid.uuid4().hex[:8]}"
    created = kafka_call(
        first,
        19,
        4,
        m.CreateTopicsRequest(
            topics=[
                m.CreateTopicsRequest.CreatableTopic(
                    name=topic, num_partitions=1, replication_factor=1, assignments=[], configs=[]
                )
            ],
            timeout_ms=10_000,
        ),
    )
    assert created.topics[0].error_code == 0
    assert metadata_error(second, topic) == TOPIC_AUTHORIZATION_FAILED  # CREATE, not DESCRIBE

    describe = m.CreateAclsRequest.AclCreation(
        resource_type=TOPIC_TYPE,
        resource_name=topic,
        resource_pattern_type=LITERAL,
        principal=ANON,
        host="*",
        operation=DESCRIBE,
        permission_type=ALLOW,
    )
    started = time.monotonic()
    result = kafka_call(first, 30, 1, m.CreateAclsRequest(creations=[describe]))
    assert result.results[0].error_code == 0
    assert metadata_error(first, topic) == 0  # the agent that stored it applies it at once
    wait_until(lambda: metadata_error(second, topic) == 0, 5, "the other agent applies the ACL")
    assert time.monotonic() - started < 5

    deleted = kafka_call(
        first,
        31,
        1,
        m.DeleteAclsRequest(
            filters=[
                m.DeleteAclsRequest.DeleteAclsFilter(
                    resource_type_filter=TOPIC_TYPE,
                    resource_name_filter=topic,
                    pattern_type_filter=LITERAL,
                    principal_filter=None,
                    host_filter=None,
                    operation=1,
                    permission_type=1,
                )
            ]
        ),
    )
    assert len(deleted.filter_results[0].matching_acls) == 1
    wait_until(
        lambda: metadata_error(second, topic) == TOPIC_AUTHORIZATION_FAILED,
        5,
        "the other agent drops the deleted ACL",
    )
