"""The credit ledger in Redis: its Lua script calls, their typed replies and results, the
outbox entry the SQL writer reads, the key names, the units, API keys, voids and the reads
consoles make. Everything that decides about money lives here (and in the scripts,
sidecar/lua/)."""
