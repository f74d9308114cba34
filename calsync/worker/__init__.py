"""The SyncJob worker: a watch-fed job queue (`queue`), the runner that claims and runs jobs
exclusively and fenced (`runner`), and what it reports (`reporting`). No Kopf here."""

from calsync.worker.runner import Worker, WorkerRefused

__all__ = ["Worker", "WorkerRefused"]
