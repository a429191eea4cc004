"""The web console: a small server-rendered site over a running stack (`console` program).

Map of the code (sans-I/O cores, thin I/O shells):

- `server.py`: aiohttp routes and the process's main (I/O);
- `sources.py`: the stack's read APIs it uses: gRPC, Kafka admin, sql service, metrics (I/O);
- `kafka_admin.py`: ListGroups / DescribeGroups / OffsetFetch over the Kafka protocol (I/O);
- `sampler.py`: samples offsets, produced bytes and lag every `console_sample_ms` (I/O);
- `history.py`: the sampled series of the last hour, rates (pure);
- `groups.py`: member assignments and lag per partition (pure);
- `pages.py`: every page as HTML (pure); `payload.py`: record bytes as text, JSON or hex
  (pure); `svg.py`: line charts as inline SVG (pure); `adhoc.py`: which statements the query
  form runs (pure).
"""
