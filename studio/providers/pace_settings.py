"""The knobs of the fleet's AIMD on provider limits (issue 20), from the environment.

Why these defaults (reasoned for bench/bench_adaptive.py's shape, a Replicate whose true
capacity moves 8 -> 3 -> 12 under a ceiling of 20, then tuned by that bench: the raise and
probe windows were 2 s and 6 s, 13.8 % of creates throttled; at 1 s and 10 s, 8.7 and
9.5 %, and 6.6 and 7.1 % once a re-sent create backs off (studio/providers/replicate_flux.py),
the same throughput against the oracle's, each change still followed within 30 s; a
15 s probe with 0.5 s raises did no better, 9.9 %; decreasing from the slots in use when
fewer than the limit, studio/providers/aimd.py: 5.6 % [5.4-5.8] against 7.7 % [5.8-9.7] in
two runs each on one day):

- `PROVIDER_LIMIT_DECREASE_FACTOR` 0.75: 5 -> 3, 20 -> 15 -> 11 -> 8. Halving (TCP's 0.5)
  overshoots a provider that throttles at 8 down to 4 and then needs four quiet windows
  to climb back; 0.75 reaches a lower capacity in a few throttling events while losing
  less throughput on each.
- `PROVIDER_LIMIT_COOLDOWN_SECONDS` 2: the answers of calls that were already in flight
  when the first 429 came back are the same event; a decrease per answer would drive a
  limit of 20 to 1 in one burst. A call sent once the decrease was in force and refused
  again is a new event inside it (studio/providers/aimd.py); the cooldown alone decides
  for answers that do not say when their call was sent.
- `PROVIDER_LIMIT_RAISE_AFTER_SECONDS` 1: below the point where the provider last
  throttled, a capacity that comes back is followed at +1 per window (a second, and
  until a call let in under the raised limit is accepted).
- `PROVIDER_LIMIT_PROBE_AFTER_SECONDS` 10: raising to the limit where the provider last
  throttled waits longer, so the limit sits just under the throttle point most of the
  time (each failed probe costs a 429 or two and the fleet's Retry-After) and still
  probes whether the capacity grew: 3 -> 12 is one probe, then raises that double
  (+1, +2, +4), ~15-20 s. A limit that holds this long is the floor of the next
  throttling event on a climb past it.

`PROVIDER_LIMITS_ADAPTIVE=false` keeps the caps fixed (the limit is never changed) while
Retry-After is still honoured fleet-wide.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class PaceSettings(BaseSettings):
    """Environment: PROVIDER_LIMITS_ADAPTIVE, PROVIDER_LIMIT_DECREASE_FACTOR,
    PROVIDER_LIMIT_COOLDOWN_SECONDS, PROVIDER_LIMIT_RAISE_AFTER_SECONDS,
    PROVIDER_LIMIT_PROBE_AFTER_SECONDS."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    adaptive: bool = Field(True, validation_alias="PROVIDER_LIMITS_ADAPTIVE")
    decrease_factor: float = Field(
        0.75, gt=0, lt=1, validation_alias="PROVIDER_LIMIT_DECREASE_FACTOR"
    )
    cooldown_seconds: float = Field(2.0, ge=0, validation_alias="PROVIDER_LIMIT_COOLDOWN_SECONDS")
    raise_after_seconds: float = Field(
        1.0, ge=0, validation_alias="PROVIDER_LIMIT_RAISE_AFTER_SECONDS"
    )
    probe_after_seconds: float = Field(
        10.0, ge=0, validation_alias="PROVIDER_LIMIT_PROBE_AFTER_SECONDS"
    )
