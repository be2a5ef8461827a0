"""mdr: multilingual dense retrieval experiments (Hydra + Lightning + faiss)."""

__version__ = "0.1.0"
