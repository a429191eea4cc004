"""The ingest process: gRPC (and later Kafka) listeners in front of the pipeline."""

from __future__ import annotations

import asyncio
import logging

from ingest.grpc_service import start_grpc_server
from ingest.kafka.broker import KafkaBroker
from ingest.pipeline import Pipeline
from metadata.async_store import AsyncMetadata
from streamhouse.config import Settings
from streamhouse.process import run_process

log = logging.getLogger("ingest")


async def run_ingest(settings: Settings, stop: asyncio.Event) -> None:
    meta = await AsyncMetadata.open(
        settings.metadata_target, forbid_loop_calls=settings.debug_loop_calls
    )
    pipeline = Pipeline(settings)
    pipeline.start()
    server = await start_grpc_server(settings, meta, pipeline)
    kafka = KafkaBroker(settings, meta, pipeline)
    await kafka.start()
    log.info(
        "ingest ready: gRPC on %s, Kafka on %s (advertised %s:%d)",
        settings.grpc_listen,
        settings.kafka_listen,
        *settings.kafka_advertised_address,
    )
    try:
        await stop.wait()
    finally:
        log.info("shutting down: refusing new requests, finishing those in flight")
        await kafka.stop()
        await server.stop(grace=5)
        await pipeline.close()
        await meta.close()


def main() -> None:
    run_process("ingest", run_ingest)


if __name__ == "__main__":
    main()
