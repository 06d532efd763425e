"""Modal SDXL + LoRA through a deployed web endpoint (MODAL_SDXL_ENDPOINT).

The endpoint is protected by Modal's proxy auth: the token pair goes in the
`Modal-Key`/`Modal-Secret` headers. Modal answers a request that runs longer than
150 s with `303 See Other` to a result URL that must be fetched (possibly again and
again), so redirects are followed. Body (our endpoint's contract): prompt,
negative_prompt, lora_url, seed, width, height, num_inference_steps -> image bytes.
"""

from __future__ import annotations

import httpx

from studio.providers.base import ProviderError, ProviderImage
from studio.providers.comfyui import NEGATIVE_PROMPT, seed_for
from studio.types import AvatarRef, PieceSpec

#: statuses where asking again cannot help (auth, missing endpoint, bad body)
NOT_RETRYABLE = {400, 401, 403, 404, 405, 422}


class ModalSDXLProvider:
    name = "modal"
    stand_in = False

    def __init__(
        self,
        endpoint: str,
        *,
        token_id: str | None = None,
        token_secret: str | None = None,
        price_usd: float = 0.01,
        timeout: float = 300.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        headers = {}
        if token_id and token_secret:
            headers = {"Modal-Key": token_id, "Modal-Secret": token_secret}
        self.endpoint = endpoint
        self.price_usd = price_usd
        self._client = client or httpx.AsyncClient(
            headers=headers,
            follow_redirects=True,
            max_redirects=20,
            timeout=httpx.Timeout(timeout, connect=10.0),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def generate(self, spec: PieceSpec, avatar: AvatarRef) -> ProviderImage:
        if not avatar.lora_weights_url:
            raise ProviderError(self.name, "avatar has no LoRA weights", retryable=False)
        body = {
            "prompt": spec.prompt,
            "negative_prompt": NEGATIVE_PROMPT,
            "lora_url": avatar.lora_weights_url,
            "seed": seed_for(spec.piece_id),
            "width": 1024,
            "height": 1024,
            "num_inference_steps": 30,
        }
        try:
            response = await self._client.post(self.endpoint, json=body)
        except httpx.TooManyRedirects:
            raise ProviderError(self.name, "result still pending after too many 303s") from None
        except httpx.HTTPError as exc:
            raise ProviderError(self.name, f"request failed: {type(exc).__name__}") from None
        status = response.status_code
        if status != 200:
            raise ProviderError(
                self.name,
                f"endpoint answered HTTP {status}"
                + (f" after {len(response.history)} redirect(s)" if response.history else ""),
                retryable=status not in NOT_RETRYABLE,
            )
        content_type = response.headers.get("content-type", "").split(";")[0]
        if not content_type.startswith("image/"):
            raise ProviderError(self.name, f"endpoint answered {content_type or 'no'} content")
        return ProviderImage(response.content, content_type, self.price_usd)
