"""Hard-negative mining: retrieve candidates per training query, drop positives, cache the pool."""
