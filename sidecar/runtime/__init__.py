"""The running process: the data dir, logs, metrics, SIGHUP reloads, supervised children and
where the outbox writer runs."""
