"""The dev stack behind `keysync up`: everything on one machine, stopped as one.

`supervisor.run` brings it up in order (embedded servers from `keysync.embedded` when no
URL is configured, migrations, the G2A simulator, a first sync, then web + worker +
scheduler) and stops it all on a signal or when a long-running child dies. `stack` owns
the child processes and what a crashed run left behind, `procs` reads `/proc` for process
identity and liveness, `dev_secrets` keeps the generated secrets in the data dir.
"""
