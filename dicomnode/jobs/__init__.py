"""Durable jobs (one per run of a series) and the worker that analyses them."""

from dicomnode.jobs.queue import Job, JobQueue

__all__ = ["Job", "JobQueue"]
