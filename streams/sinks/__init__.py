"""Where features go: Redis (online, compare-and-set by event time) and Parquet (offline log)."""
