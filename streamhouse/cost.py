"""A monthly cost estimate of a StreamHouse deployment at S3 list prices, beside the same data on
a replicated Kafka deployment (``streamctl storage --cost``).

Inputs are what metadata knows (:class:`Usage`, filled from ``DescribeStorage``) plus what it
cannot know, given by the caller:

- Storage: every byte in the bucket is billed, live or not: the live objects' sizes
  (``bytes_stored``, which includes the dead batches still inside partly-live objects) plus the
  dead objects waiting out the grace period (``dead_bytes``). Orphans (objects no row knows) are
  not in metadata and not counted; the lifecycle deletes them after the grace period.
- PUTs: one PUT per object created (segments are single-part uploads), counted by metadata over
  the last hour (``segments_created_last_hour``, which includes the objects written by
  compaction and rewrites) and extrapolated to a month of :data:`HOURS_PER_MONTH`.
- GETs: not counted anywhere. A consumer at the tail of a partition on the agent that wrote it
  is served from the reader's cache (no GET); a consumer on another agent costs about one
  range GET per block committed per reading agent; a cold read of a partition's history costs
  one GET per block (plus prefetch). So the caller gives a rate (``gets_per_second``, default 0,
  printed as such) from its own request metrics or the object store's bill.
- Not counted: LIST requests of the lifecycle's orphan scan (one per 1,000 objects per pass),
  DELETEs (free on S3), data transfer (free between EC2 and S3 in one region), compute.

The Kafka column prices the same live data on brokers: :data:`KAFKA_REPLICATION_FACTOR` copies
on block storage (EBS gp3) provisioned so the data fills :data:`KAFKA_DISK_FILL` of the disks,
and the replication traffic of the bytes written (each byte copied to the followers, which sit
in other availability zones, at the cross-AZ transfer price). Produce and consume traffic that
crosses zones is left out on both sides (zone-aware clients avoid it for both systems), as are
brokers' and agents' instances. The bytes written per hour are the bytes of the objects created
in the last hour (after StreamHouse's block compression; Kafka would store the same produced
batches, so this is close) unless the caller gives its own figure.

Units: AWS bills storage per "GB-month" where a GB is 2^30 bytes (:data:`GIB`); a month is
:data:`HOURS_PER_MONTH` hours, as AWS's calculator uses. All prices are US dollars and are
overridable (``streamctl storage --cost --s3-gb-month-usd ...``); they were not re-checked by
this code: check the pages cited before quoting a figure.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "CROSS_AZ_GB_USD",
    "EBS_GP3_GB_MONTH_USD",
    "GIB",
    "HOURS_PER_MONTH",
    "KAFKA_DISK_FILL",
    "KAFKA_REPLICATION_FACTOR",
    "S3_GET_PER_1000_USD",
    "S3_PUT_PER_1000_USD",
    "S3_STANDARD_GB_MONTH_USD",
    "CostEstimate",
    "CostLine",
    "Prices",
    "Usage",
    "estimate",
]

GIB = 1024**3
"""Bytes in the "GB" of AWS bills (GB-month, per-GB transfer)."""

HOURS_PER_MONTH = 730
"""Hours in a billing month (365 * 24 / 12), as the AWS Pricing Calculator counts."""

# S3 Standard, US East (N. Virginia), https://aws.amazon.com/s3/pricing/ ("Storage pricing",
# first 50 TB / month; "Requests & data retrievals"). These list prices have been unchanged
# since December 2016 and were current when this was written (2025); not re-checked since.
S3_STANDARD_GB_MONTH_USD = 0.023
"""S3 Standard storage, per GB-month (first 50 TB per month)."""
S3_PUT_PER_1000_USD = 0.005
"""S3 Standard PUT, COPY, POST and LIST requests, per 1,000."""
S3_GET_PER_1000_USD = 0.0004
"""S3 Standard GET, SELECT and all other requests, per 1,000."""

# Kafka on brokers, same region.
EBS_GP3_GB_MONTH_USD = 0.08
"""EBS gp3 volume storage, US East (N. Virginia), per GB-month provisioned
(https://aws.amazon.com/ebs/pricing/; baseline 3,000 IOPS and 125 MB/s included)."""
CROSS_AZ_GB_USD = 0.02
"""Data transferred between availability zones of one region: $0.01 per GB out of the sending
zone plus $0.01 per GB into the receiving one (https://aws.amazon.com/ec2/pricing/on-demand/,
"Data Transfer within the same AWS Region")."""
KAFKA_REPLICATION_FACTOR = 3
"""Copies of each partition (replication.factor=3, the usual production setting, with
min.insync.replicas=2); the followers are placed in the other two zones (rack awareness)."""
KAFKA_DISK_FILL = 0.5
"""The share of provisioned broker disk the data fills: operators keep free space for traffic
bursts, retention lag and partition reassignments. An assumption, not a measurement; override
it (1.0 prices the data alone)."""


class Prices(msgspec.Struct, frozen=True, kw_only=True):
    """Unit prices and the Kafka deployment's assumptions (defaults: the constants above)."""

    s3_gb_month_usd: float = S3_STANDARD_GB_MONTH_USD
    s3_put_per_1000_usd: float = S3_PUT_PER_1000_USD
    s3_get_per_1000_usd: float = S3_GET_PER_1000_USD
    block_gb_month_usd: float = EBS_GP3_GB_MONTH_USD
    cross_az_gb_usd: float = CROSS_AZ_GB_USD
    replication_factor: int = KAFKA_REPLICATION_FACTOR
    disk_fill: float = KAFKA_DISK_FILL

    def __post_init__(self) -> None:
        for name in (
            "s3_gb_month_usd",
            "s3_put_per_1000_usd",
            "s3_get_per_1000_usd",
            "block_gb_month_usd",
            "cross_az_gb_usd",
        ):
            if not getattr(self, name) >= 0:
                raise ValueError(f"price {name} = {getattr(self, name)!r} must be >= 0")
        if self.replication_factor < 1:
            raise ValueError(
                f"replication factor {self.replication_factor} must be at least 1 (a Kafka "
                "partition has one leader and replication_factor - 1 followers)"
            )
        if not 0 < self.disk_fill <= 1:
            raise ValueError(
                f"disk fill {self.disk_fill!r} must be in (0, 1]: the share of provisioned "
                "broker disk the data fills"
            )


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """What the estimate is computed from (bytes and counts as of now)."""

    bytes_stored: int  # sizes of the live objects
    dead_bytes: int  # sizes of dead objects still in the bucket (grace period)
    bytes_live: int  # bytes of the block rows: the data a reader can reach
    objects_created_last_hour: int
    bytes_written_per_hour: int  # data written in an hour (for Kafka's replication traffic)
    gets_per_second: float = 0.0

    def __post_init__(self) -> None:
        for name in (
            "bytes_stored",
            "dead_bytes",
            "bytes_live",
            "objects_created_last_hour",
            "bytes_written_per_hour",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} = {getattr(self, name)} must be >= 0")
        if not self.gets_per_second >= 0:
            raise ValueError(f"gets_per_second = {self.gets_per_second!r} must be >= 0")


class CostLine(msgspec.Struct, frozen=True, kw_only=True):
    """One priced item: ``quantity`` ``unit`` at ``unit_price_usd`` = ``monthly_usd``."""

    item: str
    quantity: float
    unit: str
    unit_price_usd: float
    monthly_usd: float
    basis: str  # where the quantity comes from


class CostEstimate(msgspec.Struct, frozen=True, kw_only=True):
    streamhouse: list[CostLine]
    kafka: list[CostLine]
    streamhouse_monthly_usd: float
    kafka_monthly_usd: float
    saving_percent: float | None  # None when the Kafka figure is 0
    prices: Prices
    usage: Usage


def _line(item: str, quantity: float, unit: str, price: float, basis: str) -> CostLine:
    return CostLine(
        item=item,
        quantity=quantity,
        unit=unit,
        unit_price_usd=price,
        monthly_usd=quantity * price,
        basis=basis,
    )


def estimate(usage: Usage, prices: Prices | None = None) -> CostEstimate:
    """The monthly bill of `usage` on S3 and on a replicated Kafka deployment."""
    p = prices or Prices()
    bucket_gib = (usage.bytes_stored + usage.dead_bytes) / GIB
    puts = usage.objects_created_last_hour * HOURS_PER_MONTH
    gets = usage.gets_per_second * 3600 * HOURS_PER_MONTH
    streamhouse = [
        _line(
            "S3 storage",
            bucket_gib,
            "GB-month",
            p.s3_gb_month_usd,
            "live objects' sizes + dead objects awaiting deletion",
        ),
        _line(
            "S3 PUT",
            puts / 1000,
            "1,000 requests",
            p.s3_put_per_1000_usd,
            f"{usage.objects_created_last_hour} objects created in the last hour x "
            f"{HOURS_PER_MONTH} h",
        ),
        _line(
            "S3 GET",
            gets / 1000,
            "1,000 requests",
            p.s3_get_per_1000_usd,
            f"{usage.gets_per_second:g} GETs/s given (not counted by StreamHouse)",
        ),
    ]
    live_gib = usage.bytes_live / GIB
    provisioned_gib = live_gib * p.replication_factor / p.disk_fill
    written_gib = usage.bytes_written_per_hour * HOURS_PER_MONTH / GIB
    replicated_gib = written_gib * (p.replication_factor - 1)
    kafka = [
        _line(
            "block storage",
            provisioned_gib,
            "GB-month",
            p.block_gb_month_usd,
            f"live bytes x {p.replication_factor} replicas / {p.disk_fill:g} disk fill",
        ),
        _line(
            "cross-AZ replication",
            replicated_gib,
            "GB",
            p.cross_az_gb_usd,
            f"{usage.bytes_written_per_hour} bytes written per hour x {HOURS_PER_MONTH} h x "
            f"{p.replication_factor - 1} followers in other zones",
        ),
    ]
    sh_total = sum(line.monthly_usd for line in streamhouse)
    kafka_total = sum(line.monthly_usd for line in kafka)
    saving = None if kafka_total <= 0 else 100.0 * (1 - sh_total / kafka_total)
    return CostEstimate(
        streamhouse=streamhouse,
        kafka=kafka,
        streamhouse_monthly_usd=sh_total,
        kafka_monthly_usd=kafka_total,
        saving_percent=saving,
        prices=p,
        usage=usage,
    )
