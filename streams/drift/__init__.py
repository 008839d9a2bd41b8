"""Drift: reference profiles, PSI over event-time windows of the prediction log, sustained alerts."""
