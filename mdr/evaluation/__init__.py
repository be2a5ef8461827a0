"""Corpus encoding, faiss search, TREC run files and trec_eval-equivalent metrics."""
