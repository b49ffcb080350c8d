"""The commands that change or check a cache, one module each: ingest, verify, repair, gc, remove, stats, and
push/pull (transfer). Each takes an index engine and an object store; ``eegcache.Cache`` and the CLI call them."""
