"""Encoders: the bi-encoder, its Lightning wrapper and local model builders."""
