"""The ops service: consumer lag exporter, metrics history and the built-in dashboard."""
