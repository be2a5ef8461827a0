"""Retrieval data: schemas, readers, negative sampling, batching."""
