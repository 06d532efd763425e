"""Where a provider call tells the fleet that its provider throttles, and waits its turn.

Why: a provider's real capacity moves (Replicate answers 429 with Retry-After, Anthropic
429/529 when overloaded, Modal 503 with Retry-After). One call backing off on its own
leaves every other call of every process sending into the throttled provider. So each
provider client reports what it sees here, at the HTTP layer where the answer arrives,
and asks here before it starts a job; what the fleet does about it (lower the Prefect
global concurrency limit, honour Retry-After on every host, rate limits) is decided
by listeners the Prefect side registers (engine/provider_pace.py, engine/provider_rates.py).
`studio/` knows no Prefect: with no listener registered every function here is a no-op,
so the domain runs and tests the same without an orchestrator.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Awaitable, Callable, Collection
from contextvars import ContextVar, Token
from typing import Any, Protocol

#: the answers that mean "too much, slow down" for every provider
THROTTLE_STATUSES = frozenset({429})
#: overload answers some providers document: Anthropic 529; Modal/Replicate 503 (counted
#: only with a Retry-After, since a bare 503 is an outage, not a pace)
OVERLOAD_STATUSES = {
    "anthropic": frozenset({529}),
    "modal": frozenset({503}),
    "replicate": frozenset({503}),
}
#: statuses that throttle only when the answer carries a Retry-After
NEEDS_RETRY_AFTER = frozenset({503})
#: the request extension `event_hooks` notes a request's send time in (epoch seconds)
SENT_AT = "studio.sent_at"
#: when the running call got its fleet slot (epoch seconds; set by the chain): the limit
#: it was let in under is the one in force then, however long it waited to send after
_admitted_at: ContextVar[float | None] = ContextVar("studio_admitted_at", default=None)
#: the providers whose clients report their answers here (replicate_flux.py,
#: modal_endpoint.py, hooks/anthropic_writer.py): the only ones the fleet can hold back
REPORTING = frozenset({"replicate", "modal", "anthropic"})


class PaceListener(Protocol):
    """What the fleet's pace keeper does with a provider's answers."""

    async def before_call(self, provider: str) -> None:
        """Return once `provider` may be sent a new job (its Retry-After passed on every
        host, its rate limit allows one more)."""
        ...

    def throttled(self, provider: str, status: int, retry_after: float | None,
                  sent_at: float | None = None) -> None:
        """`provider` answered a throttling status (never blocks: the answer's caller
        goes on with its own retry). `sent_at`: when the throttled call was sent (epoch
        seconds; None when not known), which tells an answer to a call sent before the
        fleet lowered its limit from one sent after it."""
        ...

    async def taken_in(self, provider: str) -> None:
        """Return once this process's throttling answers of `provider` are in the fleet's
        decision (its limit lowered, its Retry-After shared), or a short while has passed."""
        ...

    def succeeded(self, provider: str, sent_at: float | None = None) -> None:
        """`provider` accepted a job (the quiet time that lets a lowered limit rise).
        `sent_at`: when the accepted call was let in (epoch seconds; None when not
        known): only a call let in under the limit in force says that limit holds."""
        ...


_listeners: list[PaceListener] = []


def register(listener: PaceListener) -> None:
    """Add `listener` (idempotent: registering the same object twice keeps one)."""
    if not any(existing is listener for existing in _listeners):
        _listeners.append(listener)


def unregister(listener: PaceListener) -> None:
    _listeners[:] = [existing for existing in _listeners if existing is not listener]


def listeners() -> tuple[PaceListener, ...]:
    return tuple(_listeners)


async def before_call(provider: str) -> None:
    for listener in tuple(_listeners):
        await listener.before_call(provider)


async def before_slot(provider: str) -> None:
    """Wait for `provider`'s fleet-wide Retry-After before a provider slot is taken.

    Why before the slot and not only before the request: a call that waits for the
    Retry-After holding its slot keeps the slot through a decrease of the limit, and every
    such call fires the moment the Retry-After passes, at the limit in force before the
    throttle (issue 20's bench: 10 creates refused at once, 1.5-2.5 s after they took
    their slots). Waiting first, they take slots again under the lowered limit. The
    client still asks `before_call` before sending: a throttle may come meanwhile."""
    if provider in REPORTING:
        await before_call(provider)


def throttled(provider: str, status: int, retry_after: float | None,
              sent_at: float | None = None) -> None:
    for listener in tuple(_listeners):
        listener.throttled(provider, status, retry_after, sent_at)


async def taken_in(provider: str) -> None:
    """Wait until the fleet has taken in this process's throttling answers of `provider`;
    a throttled call asks before it gives its slot back.

    Why: given back at once, the slot went to the next waiting call under the limit the
    throttle was about to lower, and that call, from a process that had not yet heard of
    the Retry-After, was refused too (issue 20's bench: a refused probe at 9 was followed
    by a second refusal 0.1-0.2 s later, and at a fall every refused call's slot fired
    another). Once the throttle is in, the lowered limit binds the slot's next holder."""
    for listener in tuple(_listeners):
        await listener.taken_in(provider)


def succeeded(provider: str, sent_at: float | None = None) -> None:
    for listener in tuple(_listeners):
        listener.succeeded(provider, sent_at)


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header as seconds (a number, or an HTTP date); None when absent or
    unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def throttle_of(provider: str, status: int, headers: Any) -> float | bool | None:
    """False when an answer is not throttling; else its Retry-After in seconds (None
    when the answer gave none)."""
    retry_after = retry_after_seconds(headers.get("Retry-After") if headers else None)
    if status in THROTTLE_STATUSES:
        return retry_after
    if status in OVERLOAD_STATUSES.get(provider, ()):
        if status in NEEDS_RETRY_AFTER and retry_after is None:
            return False
        return retry_after
    return False


def admitted() -> Token[float | None]:
    """The running call has its fleet slot now (the chain, as the slot is granted); give
    the token back to `admitted_reset` when the call is over."""
    return _admitted_at.set(time.time())


def admitted_reset(token: Token[float | None]) -> None:
    _admitted_at.reset(token)


def let_in_at(sent_at: float | None) -> float | None:
    """When a call was let in under the fleet's limit: its slot's time when it had one
    before it was sent, else its send time.

    Why: a call that took its slot under the old limit, then waited in the transport for
    the fleet's Retry-After, was sent after the decrease was in force and refused again:
    read as a new event, it lowered the limit once more (3 -> 2 at a capacity of 3, for a
    probe window), though it said nothing of the lowered limit it never ran under."""
    slot = _admitted_at.get()
    if sent_at is None or slot is None:
        return sent_at
    return min(sent_at, slot)


def note_answer(provider: str, method: str, status: int, headers: Any,
                sent_at: float | None = None) -> None:
    """Report one HTTP answer of `provider`: throttling, or an accepted job (a 2xx POST).
    `sent_at`: when its request was sent (epoch seconds), if known; a call under a fleet
    slot reports when it got the slot, if earlier (`let_in_at`)."""
    seen = throttle_of(provider, status, headers)
    if seen is not False:
        retry_after = seen if isinstance(seen, float) else None
        throttled(provider, status, retry_after, let_in_at(sent_at))
    elif method == "POST" and 200 <= status < 300:
        succeeded(provider, let_in_at(sent_at))


def event_hooks(
    provider: str, *, gated_methods: Collection[str] = ("POST",)
) -> dict[str, list[Callable[[Any], Awaitable[None]]]]:
    """httpx (or httpx2, as the Anthropic and OpenAI SDKs use) async event hooks that wait
    for the fleet before each job-starting request and report every answer.

    Merge them with a client's own hooks: `{"request": [mine, *hooks["request"]], ...}`."""

    async def gate(request: Any) -> None:
        if request.method in gated_methods:
            await before_call(provider)
        request.extensions[SENT_AT] = time.time()

    async def report(response: Any) -> None:
        request = response.request
        note_answer(provider, request.method, response.status_code, response.headers,
                    request.extensions.get(SENT_AT))

    return {"request": [gate], "response": [report]}
