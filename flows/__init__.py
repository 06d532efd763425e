"""The flows: content batch, image-chunk subflow, scheduled fan-out, health check."""

from studio.runtime_env import apply_prefect_defaults

apply_prefect_defaults()
