"""Sizing the worker Deployment from the SyncJob queue, the way the HPA would.

`policy` is the pure decision, `pending` counts pending SyncJobs from watches, and `controller`
reads and writes the Deployment's scale subresource on an interval.
"""
