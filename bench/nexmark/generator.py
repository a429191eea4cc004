"""The Nexmark event generator: deterministic, a chunk of events at a time, all in numpy/Arrow.

Events are generated in fixed chunks of ``CHUNK_EVENTS`` consecutive event ids; chunk ``c``
draws from its own random stream, ``numpy.random.default_rng([seed, c])``, so a chunk's
events depend only on (seed, chunk index, model config): the same seed and event count give
the same events and the same bytes, the first N events of a longer run are the N events of a
shorter one, and chunks could be made on several cores. The shared tables (the 8 MiB random
string the ``extra`` fields are cut from, the 10,000 non-hot channels and their URLs) are drawn once
from ``default_rng([seed, 2**32])``.

A chunk is three Arrow tables (``PERSON_SCHEMA``, ``AUCTION_SCHEMA``, ``BID_SCHEMA``: the
field names of the Nexmark schema; ``dateTime`` / ``expires`` as timestamp[ms]) plus, per
table, the record the generator writes to the topic of that name:

- value: one JSON object, UTF-8, no whitespace, fields in schema order; integers as JSON
  numbers; ``dateTime`` and ``expires`` as ``"YYYY-MM-DD HH:MM:SS.mmm"`` strings (UTC; Flink
  SQL's JSON timestamp format, which Arrow's JSON reader and so ``CREATE STREAM ... (x
  TIMESTAMP)`` parse); strings hold only ``[a-z0-9 _@./?=&:-]`` and need no escapes.
- key: the decimal id of the person / the auction; for a bid, its auction (so the bids of an
  auction land in one partition).
- timestamp: the event's ``dateTime`` in ms.

The values are built by Arrow string kernels over whole columns (``binary_join_element_wise``
of literal pieces and cast/strftime'd columns), so no Python object is made per event until
the producer needs one per message.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .model import (
    AUCTION_ID_LEAD,
    AUCTION_PROPORTION,
    FIRST_AUCTION_ID,
    FIRST_CATEGORY_ID,
    FIRST_PERSON_ID,
    HOT_AUCTION_BLOCK,
    HOT_BIDDER_BLOCK,
    HOT_SELLER_BLOCK,
    NUM_CATEGORIES,
    PERSON_ID_LEAD,
    TOTAL_PROPORTION,
    EventKind,
    ModelConfig,
    event_kinds,
    last_auction_id,
    last_person_id,
    timestamps_ms,
)

__all__ = [
    "AUCTION_SCHEMA",
    "BID_SCHEMA",
    "CHUNK_EVENTS",
    "PERSON_SCHEMA",
    "Chunk",
    "Generator",
    "Records",
    "create_stream_sql",
]

CHUNK_EVENTS = 50_000
EXTRA_POOL_BYTES = 8 << 20
CHANNELS = 10_000
HOT_CHANNELS = ("Google", "Facebook", "Baidu", "Apple")
US_STATES = ("AZ", "CA", "ID", "OR", "WA", "WY")
US_CITIES = (
    "Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland",
    "Bend", "Redmond", "Seattle", "Kent", "Cheyenne",
)  # fmt: skip
FIRST_NAMES = (
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
)  # fmt: skip
LAST_NAMES = (
    "Shultz",
    "Abrams",
    "Spencer",
    "White",
    "Bartels",
    "Walton",
    "Smith",
    "Jones",
    "Noris",
)

TS = pa.timestamp("ms")
PERSON_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("name", pa.string()),
        ("emailAddress", pa.string()),
        ("creditCard", pa.string()),
        ("city", pa.string()),
        ("state", pa.string()),
        ("dateTime", TS),
        ("extra", pa.string()),
    ]
)
AUCTION_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("itemName", pa.string()),
        ("description", pa.string()),
        ("initialBid", pa.int64()),
        ("reserve", pa.int64()),
        ("dateTime", TS),
        ("expires", TS),
        ("seller", pa.int64()),
        ("category", pa.int64()),
        ("extra", pa.string()),
    ]
)
BID_SCHEMA = pa.schema(
    [
        ("auction", pa.int64()),
        ("bidder", pa.int64()),
        ("price", pa.int64()),
        ("channel", pa.string()),
        ("url", pa.string()),
        ("dateTime", TS),
        ("extra", pa.string()),
    ]
)
_STRING_FIELDS = {"name", "emailAddress", "creditCard", "city", "state", "extra", "itemName",
                  "description", "channel", "url"}  # fmt: skip


@dataclass(frozen=True)
class Records:
    """What goes to one topic: parallel arrays of keys and values (binary) and timestamps."""

    keys: pa.Array
    values: pa.Array
    timestamps: np.ndarray  # int64 ms


@dataclass(frozen=True)
class Chunk:
    """Events ``[first_event, first_event + events)``: the three tables and their records."""

    first_event: int
    events: int
    person: pa.Table
    auction: pa.Table
    bid: pa.Table

    def records(self, topic: str) -> Records:
        table: pa.Table = getattr(self, topic)
        key_column = "auction" if topic == "bid" else "id"
        keys = pc.cast(pc.cast(table.column(key_column), pa.string()), pa.binary())
        return Records(
            keys=keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys,
            values=json_values(table),
            timestamps=table.column("dateTime").cast(pa.int64()).to_numpy(),
        )


def _string_array(data: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """A string array of consecutive pieces of ``data`` (uint8 ASCII) of the given lengths,
    over ``data``'s own memory (no copy)."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.StringArray.from_buffers(len(lengths), pa.py_buffer(offsets), pa.py_buffer(data))


def _random_strings(
    rng: np.random.Generator, n: int, max_length: int, special: int, trim: bool
) -> pa.Array:
    """Nexmark's ``nextString``: length 3 + U[0, max_length - 3), each character a-z or, with
    probability 1/13, ``special``; trimmed of spaces at both ends when ``trim``."""
    lengths = 3 + rng.integers(0, max_length - 3, size=n)
    draws = rng.integers(0, 26 * 13, size=int(lengths.sum()), dtype=np.int16)
    chars = (ord("a") + draws // 13).astype(np.uint8)
    chars[draws % 13 == 0] = special
    strings = _string_array(chars, lengths)
    return pc.utf8_trim(strings, characters=" ") if trim else strings


def _prices(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.floor(10.0 ** (rng.random(n) * 6.0) * 100.0 + 0.5).astype(np.int64)


def _pick(rng: np.random.Generator, words: tuple[str, ...], n: int) -> pa.Array:
    return pa.array(words, pa.string()).take(pa.array(rng.integers(0, len(words), size=n)))


def _people_ids(rng: np.random.Generator, event_ids: np.ndarray, config: ModelConfig) -> np.ndarray:
    """Base-0 random person ids: uniform over the active people plus the lead."""
    people = last_person_id(event_ids) + 1
    active = np.minimum(people, config.active_people)
    return (
        people - active + (rng.random(len(event_ids)) * (active + PERSON_ID_LEAD)).astype(np.int64)
    )


class Generator:
    """Chunks of Nexmark events for a seed and model config (see the module docstring)."""

    def __init__(self, seed: int = 0, config: ModelConfig | None = None) -> None:
        if not 0 <= seed < 2**63:
            raise ValueError(f"seed must be 0 .. 2**63 - 1: {seed}")
        self.seed = seed
        self.config = config or ModelConfig()
        shared = np.random.default_rng([seed, 2**32])
        self._extra_pool = shared.integers(ord("a"), ord("z") + 1, EXTRA_POOL_BYTES, dtype=np.uint8)
        # Base URLs https://www.nexmark.com/<a>/<b>/<c>/item.htm?query=1 (a, b, c: 3-4 chars
        # of a-z and _); 9 in 10 non-hot channels add &channel_id=<channel number, bits
        # reversed>; the 4 hot channels share the first 4 URLs.
        urls = len(HOT_CHANNELS) + CHANNELS
        parts = _random_strings(shared, 3 * urls, 5, ord("_"), trim=False)
        bases = pc.binary_join_element_wise(
            "https://www.nexmark.com/",
            parts.slice(0, urls),
            "/",
            parts.slice(urls, urls),
            "/",
            parts.slice(2 * urls, urls),
            "/item.htm?query=1",
            "",
        )
        tagged = np.concatenate(
            [np.zeros(len(HOT_CHANNELS), bool), shared.integers(0, 10, size=CHANNELS) > 0]
        )
        numbers = np.concatenate(
            [np.zeros(len(HOT_CHANNELS), np.int64), _reversed_bits(np.arange(CHANNELS))]
        )
        suffix = pc.if_else(
            pa.array(tagged),
            pc.binary_join_element_wise(
                "&channel_id=", pc.cast(pa.array(numbers), pa.string()), ""
            ),
            "",
        )
        self._urls = pc.binary_join_element_wise(bases, suffix, "")
        self._channels = pa.array(
            list(HOT_CHANNELS) + [f"channel-{i}" for i in range(CHANNELS)], pa.string()
        )

    def chunks(self, events: int, first_event: int = 0) -> Iterator[Chunk]:
        """Events ``[first_event, first_event + events)``, one chunk (or part of one) at a
        time; ``first_event`` must start a chunk."""
        if events < 0:
            raise ValueError(f"event count must be >= 0: {events}")
        if first_event % CHUNK_EVENTS:
            raise ValueError(f"first event must be a multiple of {CHUNK_EVENTS}: {first_event}")
        end = first_event + events
        for start in range(first_event, end, CHUNK_EVENTS):
            yield self.chunk(start // CHUNK_EVENTS, min(CHUNK_EVENTS, end - start))

    def chunk(self, index: int, events: int = CHUNK_EVENTS) -> Chunk:
        """The first ``events`` events of chunk ``index`` (a prefix of the full chunk)."""
        if not 0 <= events <= CHUNK_EVENTS:
            raise ValueError(f"a chunk holds 0 .. {CHUNK_EVENTS} events: {events}")
        rng = np.random.default_rng([self.seed, index])
        first = index * CHUNK_EVENTS
        # Draw for the whole chunk, so a shorter run is a prefix of a longer one.
        ids = np.arange(first, first + CHUNK_EVENTS, dtype=np.int64)
        kinds = event_kinds(ids)
        times = timestamps_ms(ids, self.config)
        person = self._people(rng, ids[kinds == EventKind.PERSON], times[kinds == EventKind.PERSON])
        auction = self._auctions(
            rng, ids[kinds == EventKind.AUCTION], times[kinds == EventKind.AUCTION]
        )
        bid = self._bids(rng, ids[kinds == EventKind.BID], times[kinds == EventKind.BID])
        if events < CHUNK_EVENTS:
            end = first + events
            person = person.slice(0, int(np.count_nonzero(ids[kinds == 0] < end)))
            auction = auction.slice(0, int(np.count_nonzero(ids[kinds == 1] < end)))
            bid = bid.slice(0, int(np.count_nonzero(ids[kinds == 2] < end)))
        return Chunk(first, events, person, auction, bid)

    def _extra(self, rng: np.random.Generator, current: np.ndarray, average: int) -> pa.Array:
        """Nexmark's ``nextExtra``: a string making the event ``average`` bytes on average
        (+-20 %). The extras of a chunk's events are consecutive pieces of one run of the
        shared random pool starting at a random place (Flink cuts each at its own random
        place; the strings are as random either way, and this is one copy, not a gather)."""
        wanted = np.maximum(average - current, 0)
        delta = np.floor(wanted * 0.2 + 0.5).astype(np.int64)
        sizes = wanted - delta + (rng.random(len(current)) * 2 * delta).astype(np.int64)
        sizes[current > average] = 0
        total = int(sizes.sum())
        if total <= EXTRA_POOL_BYTES:
            start = int(rng.integers(0, EXTRA_POOL_BYTES - total + 1))
            data = self._extra_pool[start : start + total]
        else:  # larger than the pool (huge --avg sizes): wrap around it
            start = int(rng.integers(0, EXTRA_POOL_BYTES))
            data = self._extra_pool[(start + np.arange(total)) % EXTRA_POOL_BYTES]
        return _string_array(data, sizes)

    def _people(self, rng: np.random.Generator, ids: np.ndarray, times: np.ndarray) -> pa.Table:
        n = len(ids)
        first = _pick(rng, FIRST_NAMES, n)
        last = _pick(rng, LAST_NAMES, n)
        name = pc.binary_join_element_wise(first, last, " ")
        user = _random_strings(rng, n, 7, ord(" "), trim=True)
        host = _random_strings(rng, n, 5, ord(" "), trim=True)
        email = pc.binary_join_element_wise(user, "@", host, ".com", "")
        digits = [pc.utf8_lpad(pc.cast(pa.array(rng.integers(0, 10_000, n)), pa.string()), 4, "0")
                  for _ in range(4)]  # fmt: skip
        card = pc.binary_join_element_wise(*digits, " ")
        city = _pick(rng, US_CITIES, n)
        state = _pick(rng, US_STATES, n)
        current = 8 + sum(
            pc.binary_length(col).to_numpy(zero_copy_only=False).astype(np.int64)
            for col in (name, email, card, city, state)
        )
        extra = self._extra(rng, current, self.config.avg_person_bytes)
        return pa.Table.from_arrays(
            [
                pa.array(last_person_id(ids) + FIRST_PERSON_ID),
                name,
                email,
                card,
                city,
                state,
                pa.array(times, TS),
                extra,
            ],
            schema=PERSON_SCHEMA,
        )

    def _auctions(self, rng: np.random.Generator, ids: np.ndarray, times: np.ndarray) -> pa.Table:
        n, config = len(ids), self.config
        hot = rng.integers(0, config.hot_sellers_ratio, size=n) > 0
        hot_seller = (last_person_id(ids) // HOT_SELLER_BLOCK) * HOT_SELLER_BLOCK
        seller = np.where(hot, hot_seller, _people_ids(rng, ids, config)) + FIRST_PERSON_ID
        category = FIRST_CATEGORY_ID + rng.integers(0, NUM_CATEGORIES, size=n)
        initial = _prices(rng, n)
        # Auctions last 1 + U[0, 2h) ms, h = the event time of in_flight_auctions more auctions.
        ahead = config.in_flight_auctions * TOTAL_PROPORTION // AUCTION_PROPORTION
        horizon = timestamps_ms(ids + ahead, config) - times
        expires = times + 1 + (rng.random(n) * np.maximum(2 * horizon, 1)).astype(np.int64)
        item = _random_strings(rng, n, 20, ord(" "), trim=True)
        description = _random_strings(rng, n, 100, ord(" "), trim=True)
        reserve = initial + _prices(rng, n)
        current = (
            8
            + pc.binary_length(item).to_numpy(zero_copy_only=False).astype(np.int64)
            + pc.binary_length(description).to_numpy(zero_copy_only=False).astype(np.int64)
            + 40
        )
        extra = self._extra(rng, current, config.avg_auction_bytes)
        return pa.Table.from_arrays(
            [
                pa.array(last_auction_id(ids) + FIRST_AUCTION_ID),
                item,
                description,
                pa.array(initial),
                pa.array(reserve),
                pa.array(times, TS),
                pa.array(expires, TS),
                pa.array(seller),
                pa.array(category),
                extra,
            ],
            schema=AUCTION_SCHEMA,
        )

    def _bids(self, rng: np.random.Generator, ids: np.ndarray, times: np.ndarray) -> pa.Table:
        n, config = len(ids), self.config
        last = last_auction_id(ids)
        hot_auction = rng.integers(0, config.hot_auction_ratio, size=n) > 0
        low = np.maximum(last - config.in_flight_auctions, 0)
        spread = last - low + 1 + AUCTION_ID_LEAD
        random_auction = low + (rng.random(n) * spread).astype(np.int64)
        hot_id = (last // HOT_AUCTION_BLOCK) * HOT_AUCTION_BLOCK
        auction = np.where(hot_auction, hot_id, random_auction) + FIRST_AUCTION_ID
        hot_bidder = rng.integers(0, config.hot_bidders_ratio, size=n) > 0
        hot_person = (last_person_id(ids) // HOT_BIDDER_BLOCK) * HOT_BIDDER_BLOCK + 1
        bidder = np.where(hot_bidder, hot_person, _people_ids(rng, ids, config)) + FIRST_PERSON_ID
        price = _prices(rng, n)
        # Half the bids come from the 4 hot channels, the rest from 10,000 others.
        hot_channel = rng.integers(0, 2, size=n) > 0
        channel = np.where(
            hot_channel,
            rng.integers(0, len(HOT_CHANNELS), size=n),
            len(HOT_CHANNELS) + rng.integers(0, CHANNELS, size=n),
        )
        which = pa.array(channel)
        extra = self._extra(rng, np.full(n, 32, dtype=np.int64), config.avg_bid_bytes)
        return pa.Table.from_arrays(
            [
                pa.array(auction),
                pa.array(bidder),
                pa.array(price),
                self._channels.take(which),
                self._urls.take(which),
                pa.array(times, TS),
                extra,
            ],
            schema=BID_SCHEMA,
        )


def _reversed_bits(values: np.ndarray) -> np.ndarray:
    """``abs(Integer.reverse(i))`` of Java for each value: its 32 bits reversed, read as a
    signed 32-bit int, made positive in 32 bits (so 1 -> -2147483648, as in Java)."""
    bits = values.astype(np.uint32)
    out = np.zeros_like(bits)
    for _ in range(32):
        out = (out << np.uint32(1)) | (bits & np.uint32(1))
        bits >>= np.uint32(1)
    return np.abs(out.view(np.int32)).astype(np.int64)


def json_values(table: pa.Table) -> pa.Array:
    """One JSON object per row (binary), fields in schema order (see the module docstring)."""
    pieces: list[pa.Array | str] = []
    sep = "{"
    for field in table.schema:
        column = table.column(field.name).combine_chunks()
        if pa.types.is_timestamp(field.type):
            # timestamp[ms] -> "YYYY-MM-DD HH:MM:SS.mmm" (strftime is 30x slower)
            text = pc.cast(column, pa.string())
            pieces += [f'{sep}"{field.name}":"', text]
            sep = '",'
        elif field.name in _STRING_FIELDS:
            pieces += [f'{sep}"{field.name}":"', column]
            sep = '",'
        else:
            pieces += [f'{sep}"{field.name}":', pc.cast(column, pa.string())]
            sep = ","
    pieces.append('"}' if sep == '",' else "}")
    joined = pc.binary_join_element_wise(*pieces, "")
    return pc.cast(joined, pa.binary())


_SQL_TYPES = {pa.int64(): "BIGINT", pa.string(): "VARCHAR", TS: "TIMESTAMP"}


def create_stream_sql(kind: str, name: str | None = None, topic: str | None = None) -> str:
    """``CREATE STREAM`` of one of the three topics in StreamHouse SQL: the Nexmark columns
    (camelCase names quoted, so they match the JSON fields), a watermark 4 s behind
    ``dateTime`` (Flink's Nexmark DDL), JSON format."""
    schemas = {"person": PERSON_SCHEMA, "auction": AUCTION_SCHEMA, "bid": BID_SCHEMA}
    if kind not in schemas:
        raise ValueError(f"no Nexmark stream {kind!r}: one of {sorted(schemas)}")
    columns = ", ".join(f'"{f.name}" {_SQL_TYPES[f.type]}' for f in schemas[kind])
    return (
        f'CREATE STREAM "{name or kind}" ({columns}, '
        'WATERMARK FOR "dateTime" AS "dateTime" - INTERVAL \'4\' SECOND) '
        f"WITH (topic = '{topic or kind}', format = 'json')"
    )
