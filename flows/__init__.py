"""The flows: content batch, image-chunk subflow, scheduled fan-out, health check."""

from studio.runtime_env import apply_prefect_defaults

apply_prefect_defaults()

# every flow of this package (fan-out, health, sync, ...) sends its studio.* records to
# its run's logs, also in a worker's flow-run process (see engine/run_logs.py)
from engine.run_logs import attach_run_logs  # noqa: E402

attach_run_logs()
