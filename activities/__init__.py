"""Activities: everything that touches the world (git, builders, platforms, the log store)."""

from activities.katkit_activities import KatkitActivities

__all__ = ["KatkitActivities"]
