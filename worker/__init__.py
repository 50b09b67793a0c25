"""Worker plumbing: the broker, middleware (resources, logging context, metrics), actor registry.

Importing this package sets up the dramatiq broker from BROKER_URL; `jobs` declares the
actors against it. `keysync worker` runs every actor of `jobs`.
"""

from keysync.settings import get_settings
from worker._broker import setup_broker
from worker._resources import JobContext, current_job

get_settings().require("broker_url")
broker = setup_broker(get_settings().broker_url)

__all__ = ["JobContext", "broker", "current_job"]
