"""The ingest process: gRPC (and later Kafka) listeners in front of the pipeline."""

from __future__ import annotations

import asyncio
import logging

from ingest.grpc_service import start_grpc_server
from ingest.pipeline import Pipeline
from metadata import MetadataStore
from streamhouse.config import Settings
from streamhouse.process import run_process

log = logging.getLogger("ingest")


async def run_ingest(settings: Settings, stop: asyncio.Event) -> None:
    meta = MetadataStore(settings.metadata_path)
    pipeline = Pipeline(settings)
    pipeline.start()
    server = await start_grpc_server(settings, meta, pipeline)
    log.info("ingest ready: gRPC on %s", settings.grpc_listen)
    try:
        await stop.wait()
    finally:
        log.info("shutting down: refusing new requests, finishing those in flight")
        await server.stop(grace=5)
        await pipeline.close()
        meta.close()


def main() -> None:
    run_process("ingest", run_ingest)


if __name__ == "__main__":
    main()
