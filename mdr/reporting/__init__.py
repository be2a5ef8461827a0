"""Sweep reporting: collect run folders, tables, plots and paired significance tests."""
