"""One module per pipeline step: thin Prefect tasks over the `studio` domain."""

from studio.runtime_env import apply_prefect_defaults

apply_prefect_defaults()
