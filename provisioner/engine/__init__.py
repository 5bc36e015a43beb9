"""Durable operations: steps, node leases with heartbeats, timeouts, retries, crash recovery, the worker."""
