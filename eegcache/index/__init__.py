"""The SQL index: models, migrations and engines (SQLite or PostgreSQL), the views users query, claims that keep
concurrent writers off each other's files, read-only ad hoc SQL, and copying an index between databases."""
