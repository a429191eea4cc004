"""The ingest process: gRPC and Kafka listeners in front of the pipeline, and this agent's
registration in the cluster (ingest/cluster.py: register at start, heartbeat, deregister at a
clean stop)."""

from __future__ import annotations

import asyncio
import logging

import grpc

from ingest.cluster import Membership
from ingest.grpc_service import start_grpc_server
from ingest.kafka.broker import KafkaBroker
from ingest.pipeline import Pipeline
from ingest.sampler import SampleCollector, Sampler
from ingest.serving import ServingMonitor
from ingest.throughput import ThroughputRecorder
from metadata.async_store import AsyncMetadata
from streamhouse.config import Settings
from streamhouse.metrics import start_metrics_endpoint
from streamhouse.process import check_ports_free, run_process, spawn

log = logging.getLogger("ingest")


async def run_ingest(settings: Settings, stop: asyncio.Event) -> None:
    # Startup checks: the listen ports are free (else one line naming the setting, exit 1);
    # the object store takes a probe object (until it does, one line naming the setting;
    # retried with backoff in the background).
    ports = ("grpc_listen", "kafka_listen")
    check_ports_free(settings, (*ports, "metrics_listen") if settings.metrics_enabled else ports)
    # The stack's one Prometheus scrape address (every process's metric files, and the lag
    # and storage gauges ingest samples from metadata: ingest/sampler.py).
    sampled = SampleCollector()
    start_metrics_endpoint(settings, [sampled])
    # The probe runs beside the listeners (ingest/serving.py): while the store is unusable the
    # health check says NOT_SERVING, produces are answered UNAVAILABLE with the reason (the
    # uploader's own retries), and the probe's one line says which setting to fix.
    serving = ServingMonitor(settings)
    spawn(serving.run(stop), "object store probe", forever=False)
    meta = await AsyncMetadata.open(
        settings.metadata_target, forbid_loop_calls=settings.debug_loop_calls
    )
    membership = Membership(settings, meta)
    cluster = await membership.join()
    heartbeat = spawn(membership.run(), "agent heartbeat")
    if settings.metrics_enabled:
        spawn(Sampler(settings, meta, sampled).run(stop), "metrics sampler", forever=False)
    # Produce and fetch rates of the last minute for `streamhouse status` (ingest/throughput.py).
    spawn(ThroughputRecorder(settings).run(stop), "throughput window", forever=False)
    pipeline: Pipeline | None = None
    server: grpc.aio.Server | None = None
    kafka: KafkaBroker | None = None
    try:
        pipeline = Pipeline(settings)
        pipeline.start()
        server = await start_grpc_server(settings, meta, pipeline, cluster, serving)
        kafka = KafkaBroker(settings, meta, pipeline, cluster)
        await kafka.start()
        log.info(
            "ingest ready: gRPC on %s, Kafka on %s (advertised %s:%d), agent %s node %d",
            settings.grpc_listen,
            settings.kafka_listen,
            *settings.kafka_advertised_address,
            cluster.self_agent.agent_id,
            cluster.self_agent.node_id,
        )
        await stop.wait()
    finally:
        log.info("shutting down: refusing new requests, finishing those in flight")
        heartbeat.cancel()
        # First, so the other agents take this one's partitions and groups at their next
        # heartbeat rather than when its lease lapses.
        await membership.leave()
        if kafka is not None:
            await kafka.stop()
        if server is not None:
            await server.stop(grace=5)
        if pipeline is not None:
            await pipeline.close()
        await meta.close()


def main() -> None:
    run_process("ingest", run_ingest)


if __name__ == "__main__":
    main()
