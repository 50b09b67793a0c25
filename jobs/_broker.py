"""The process's global dramatiq broker, bound when the first actor module is imported.

Every actor module declares its actors against `broker` explicitly (never dramatiq's
implicit default, which would silently be a broker on localhost). This is the only place
in the project that binds a global broker: the web app, the CLI and the scheduler build
their own with `worker.broker.make_broker(settings)`.
"""

from __future__ import annotations

import dramatiq

from keysync.settings import get_settings
from worker.broker import make_broker

broker = make_broker(get_settings())
# `dramatiq jobs` (what `keysync worker` runs) takes the global broker after importing us.
dramatiq.set_broker(broker)
