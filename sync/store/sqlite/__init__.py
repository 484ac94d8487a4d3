"""The embedded backend: one SQLite file in WAL mode, one writer, read-only readers."""
