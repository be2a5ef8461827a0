"""Sweep reporting: collect run folders, tables, plots and seed-aware tests (Satterthwaite t, TOST, trends)."""
