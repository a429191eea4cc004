"""The Nexmark model: event mix, id spaces, hot ids and timestamps, as whole-array functions.

Every function here takes numpy arrays of *event ids* (0, 1, 2, ... in generation order; the
generator's event number is the event id, there is no out-of-order grouping) and returns the
arrays the published model defines, so a batch of events costs a few numpy passes and no
Python per event. The model is the one of the Nexmark benchmark as Apache Flink's generator
(github.com/nexmark/nexmark, ``nexmark-flink``) defines it with its default configuration:

- Event mix: of every ``TOTAL_PROPORTION`` = 50 consecutive event ids, the first is a person,
  the next 3 are auctions, the last 46 are bids (``event_id % 50``: 0 person, 1-3 auction,
  4-49 bid).
- Ids: person ids and auction ids are dense and start at ``FIRST_PERSON_ID`` /
  ``FIRST_AUCTION_ID`` = 1000, in generation order (event id ``e`` of a person is person
  ``e // 50``; an auction is auction ``3 * (e // 50) + (e % 50 - 1)``); categories are
  ``FIRST_CATEGORY_ID`` = 10 .. 14.
- References: a bid's auction is, with probability 1 - 1/``hot_auction_ratio`` (1/2), the hot
  auction (the first of the current block of ``HOT_AUCTION_BLOCK`` = 100 auctions), otherwise
  uniform over the last ``in_flight_auctions`` (100) auctions plus ``AUCTION_ID_LEAD`` = 10 not
  yet created. A bid's bidder is with probability 1 - 1/``hot_bidders_ratio`` (3/4) the hot
  bidder (second person of the current block of 100 people), an auction's seller with
  probability 3/4 the hot seller (the first of that block); otherwise uniform over the last
  ``active_people`` (1000) people plus ``PERSON_ID_LEAD`` = 10 not yet created. So a reference
  may name an id up to 10 ahead of the newest one created (the model's "leads"); it is never
  below ``FIRST_*_ID`` and never more than the lead beyond the last created id.
- Prices: ``round(10 ** (6 u) * 100)`` for ``u`` uniform in [0, 1) (cents, 100 .. 10^8); an
  auction's reserve is its initial bid plus another such price.
- Timestamps: event ``e`` happens at ``base_time_ms + floor(e * 1e6 / rate) // 1000`` ms
  (``rate`` = events per second of event time), so they never go back and advance by one
  millisecond every ``rate / 1000`` events. An auction expires ``1 + U[0, 2 h)`` ms after its
  creation, where ``h`` is the event-time span of the next ``in_flight_auctions * 50 / 3``
  events.

One deliberate difference from Flink's code: Flink's bid generator adds ``FIRST_PERSON_ID``
to the bidder twice (bidders come out 1000 above every person id); here a bidder is a person
id, as in the original (Beam) model, so a join of bids to people finds them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "AUCTION_ID_LEAD",
    "AUCTION_PROPORTION",
    "BID_PROPORTION",
    "FIRST_AUCTION_ID",
    "FIRST_CATEGORY_ID",
    "FIRST_PERSON_ID",
    "HOT_AUCTION_BLOCK",
    "HOT_BIDDER_BLOCK",
    "HOT_SELLER_BLOCK",
    "NUM_CATEGORIES",
    "PERSON_ID_LEAD",
    "PERSON_PROPORTION",
    "TOTAL_PROPORTION",
    "EventKind",
    "ModelConfig",
    "event_kinds",
    "last_auction_id",
    "last_person_id",
    "timestamps_ms",
]

PERSON_PROPORTION = 1
AUCTION_PROPORTION = 3
BID_PROPORTION = 46
TOTAL_PROPORTION = PERSON_PROPORTION + AUCTION_PROPORTION + BID_PROPORTION

FIRST_PERSON_ID = 1000
FIRST_AUCTION_ID = 1000
FIRST_CATEGORY_ID = 10
NUM_CATEGORIES = 5
PERSON_ID_LEAD = 10
AUCTION_ID_LEAD = 10
HOT_AUCTION_BLOCK = 100
HOT_BIDDER_BLOCK = 100
HOT_SELLER_BLOCK = 100


class EventKind:
    PERSON = 0
    AUCTION = 1
    BID = 2


@dataclass(frozen=True)
class ModelConfig:
    """The knobs of the model (Flink's defaults); ``rate`` is events per second of event time
    (Flink's benchmark runs at 10 M/s), ``base_time_ms`` the first event's timestamp."""

    rate: int = 10_000_000
    base_time_ms: int = 1_767_225_600_000  # 2026-01-01T00:00:00Z: fixed, so runs are repeatable
    active_people: int = 1000
    in_flight_auctions: int = 100
    hot_auction_ratio: int = 2
    hot_sellers_ratio: int = 4
    hot_bidders_ratio: int = 4
    avg_person_bytes: int = 200
    avg_auction_bytes: int = 500
    avg_bid_bytes: int = 100

    def __post_init__(self) -> None:
        if not 1 <= self.rate <= 1_000_000_000:
            raise ValueError(f"rate must be 1 .. 1e9 events per second of event time: {self.rate}")
        if self.base_time_ms < 0:
            raise ValueError(f"base time must be >= 0 ms since the epoch: {self.base_time_ms}")
        for name in ("active_people", "in_flight_auctions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("hot_auction_ratio", "hot_sellers_ratio", "hot_bidders_ratio"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (1 = every reference is hot)")


def event_kinds(event_ids: np.ndarray) -> np.ndarray:
    """EventKind of each event id (int8)."""
    rem = event_ids % TOTAL_PROPORTION
    kinds = np.full(event_ids.shape, EventKind.BID, dtype=np.int8)
    kinds[rem < PERSON_PROPORTION + AUCTION_PROPORTION] = EventKind.AUCTION
    kinds[rem < PERSON_PROPORTION] = EventKind.PERSON
    return kinds


def last_person_id(event_ids: np.ndarray) -> np.ndarray:
    """Base-0 id of the newest person at each event (the event's own id if it is a person)."""
    epoch = event_ids // TOTAL_PROPORTION
    offset = np.minimum(event_ids % TOTAL_PROPORTION, PERSON_PROPORTION - 1)
    return epoch * PERSON_PROPORTION + offset


def last_auction_id(event_ids: np.ndarray) -> np.ndarray:
    """Base-0 id of the newest auction at each event (the event's own if it is an auction).
    Before the first auction (event 0) this is -1."""
    epoch = event_ids // TOTAL_PROPORTION
    offset = event_ids % TOTAL_PROPORTION
    in_epoch = np.clip(offset - PERSON_PROPORTION, -1, AUCTION_PROPORTION - 1)
    # A person opens the epoch: the newest auction is the last of the previous epoch.
    return epoch * AUCTION_PROPORTION + in_epoch


def timestamps_ms(event_ids: np.ndarray, config: ModelConfig) -> np.ndarray:
    """Event time of each event id, ms since the epoch (exact integer arithmetic)."""
    return config.base_time_ms + (event_ids.astype(np.int64) * 1_000_000 // config.rate) // 1000
