"""Point-in-time-correct training sets built from the event log with the live feature code."""
