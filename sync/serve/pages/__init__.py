"""Pieces of the catalogue web page (`sync.serve.page`)."""
