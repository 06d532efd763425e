"""A `BilledJob` that remembers what a provider reported, for the variant tests.

It is a real implementation of the seam in studio/providers/base.py (what the chain's
cost ledger does durably, held in memory): `created` records each billed job id, and
`resume_job_id` starts as the id a previous attempt left behind.
"""

from __future__ import annotations


class RecordingJob:
    def __init__(self, resume_job_id: str | None = None) -> None:
        self.resume_job_id = resume_job_id
        self.created_ids: list[str | None] = []

    def created(self, job_id: str | None) -> None:
        self.created_ids.append(job_id)

    def retry(self) -> RecordingJob:
        """The handle the next attempt gets: resume the last billed job, if it had an id."""
        last = next((i for i in reversed(self.created_ids) if i), self.resume_job_id)
        return RecordingJob(last)
