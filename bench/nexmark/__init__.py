"""Nexmark for StreamHouse (issue 9): the event generator, its model, and the command.

==============  ============================================================================
module          does
==============  ============================================================================
``model``       the published Nexmark model as whole-array numpy functions: event mix (of 50
                events 1 person, 3 auctions, 46 bids), id spaces, hot ids, timestamps
``generator``   ``Generator(seed, ModelConfig)``: deterministic chunks of events as Arrow
                tables (the Nexmark schema's field names) and the topic records made of them
                (key, JSON value, timestamp; the format is in its docstring);
                ``create_stream_sql(kind)``: the ``CREATE STREAM`` of each topic
``cli``         ``python3 bench/nexmark.py generate --events N``: the events into the
                ``person`` / ``auction`` / ``bid`` topics of a running StreamHouse
==============  ============================================================================

Still to come (issue 9): queries q0-q8 in StreamHouse SQL checked against references, and
per-query events/s per core beside Flink's published figures.
"""
