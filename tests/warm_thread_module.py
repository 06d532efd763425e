"""A module that starts a thread when imported (tests/faults/test_warm_runs.py): a warm
process must not fork after importing it."""

import threading
import time

threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
