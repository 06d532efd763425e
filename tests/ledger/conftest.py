"""Ledger tests: a real database (SQLite and PostgreSQL), providers that implement the
BilledJob seam (in-test) or the emulators reached through the real clients."""

from __future__ import annotations

from studio.providers.base import BilledJob, ProviderError, ProviderImage
from studio.types import AvatarRef, PieceSpec

AVATAR = AvatarRef(
    id="av-ledger", name="Ledger", niche="fitness",
    lora_weights_url="https://weights.example/loras/ledger.safetensors",
)
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def piece(index: int, batch_id: str = "batch-ledger") -> PieceSpec:
    return PieceSpec(
        piece_id=f"{batch_id}-p{index:03d}", batch_id=batch_id, index=index,
        prompt="a portrait in a sunny park", tier="capa1", template_id="t-ledger",
    )


class SeamProvider:
    """A billed provider that implements the seam as a real one must: it reports each job
    the moment it is created and, given `job.resume_job_id`, fetches that job instead of
    creating one. `lose` lists piece ids whose next output is lost after billing;
    `expired` lists job ids that can no longer be fetched (a new job is bought)."""

    stand_in = False

    def __init__(self, name: str = "replicate", price_usd: float = 0.03) -> None:
        self.name = name
        self.price_usd = price_usd
        self.created_jobs: list[str] = []
        self.fetched: list[str] = []
        self.lose: set[str] = set()
        self.lose_index: set[int] = set()
        self.job_of_index: dict[int, str] = {}
        self.expired: set[str] = set()
        self.refuse_create = False

    async def generate(
        self, spec: PieceSpec, avatar: AvatarRef, job: BilledJob | None = None
    ) -> ProviderImage:
        assert job is not None
        if job.resume_job_id and job.resume_job_id not in self.expired:
            self.fetched.append(job.resume_job_id)
            return ProviderImage(PNG, "image/png", self.price_usd)
        if self.refuse_create:  # e.g. a 422 on create: never billed
            raise ProviderError(self.name, "create answered HTTP 422", retryable=False)
        job_id = f"{self.name}-job-{len(self.created_jobs)}"
        self.created_jobs.append(job_id)
        self.job_of_index[spec.index] = job_id
        job.created(job_id)
        if spec.piece_id in self.lose or spec.index in self.lose_index:
            self.lose.discard(spec.piece_id)
            self.lose_index.discard(spec.index)
            raise ProviderError(self.name, "output download failed")
        return ProviderImage(PNG, "image/png", self.price_usd)
