"""The shared backend: one PostgreSQL database, read by every replica, written by the leader."""
