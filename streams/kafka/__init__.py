"""Kafka plumbing shared by every consumer and producer: topic admin, dead letters, client configs."""
