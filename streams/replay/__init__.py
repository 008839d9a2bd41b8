"""Replay and backfill: rebuild features from the Parquet event log or a topic, point-in-time exports."""
