"""Continuous queries (issue 9): ``CREATE MATERIALIZED VIEW`` and ``CREATE STREAM ... AS SELECT``.

``pipeline`` holds the contracts between the parts (the plan a query compiles to, the stages
it is made of); ``plan`` compiles a SELECT into stages; ``joins`` the join stages; ``runner``
runs one query (tail the inputs, feed the plan, commit output and checkpoint together).
"""
