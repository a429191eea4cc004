"""Kafka wire-protocol front door of the ingest process (listener, codec, group coordinator)."""
