"""Worker plumbing: how jobs are sent, run and scheduled.

- `enqueue`: `Actor` names and the one after-commit `enqueue` (plus `send_now`) that write
  paths use. Import-light: services import it.
- `broker`: `make_broker(settings)`, the Redis broker with our middleware. Building one binds
  nothing global; only the dramatiq entry module `jobs` does that.
- `context`: `current_job()` / `JobContext`, what an actor gets (resources and a session of
  its own); `_resources`, `_logging`, `_metrics`: the middleware.
- `schedule`, `election`, `scheduler`: cron declarations and tick math, leader election with
  exactly-once firing, the `keysync scheduler` process.
- `inspect`: read-only views of the broker's queues (depths, delayed, dead letters).

Importing this package imports nothing else, so `import worker.enqueue` stays light.
"""
