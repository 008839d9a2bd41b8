"""Bytewax dataflows: the wiring only; logic lives in features/ and windows/, I/O in sinks/."""
