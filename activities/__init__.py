"""Activities, one module a concern: ``shards`` (checkout, builders, logs), ``deploy`` (locks, ledger, platforms),
``reports`` (webhooks, GitHub), ``hosts`` (which worker host has a shard). ``errors`` turns katkit's errors into
Temporal failures for all of them."""

from activities.deploy import DeployActivities
from activities.hosts import HostActivities, ping_host, ping_queue
from activities.reports import ReportActivities
from activities.shards import ShardActivities

__all__ = ["DeployActivities", "HostActivities", "ReportActivities", "ShardActivities", "ping_host", "ping_queue"]
