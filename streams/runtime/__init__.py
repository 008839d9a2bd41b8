"""What every long-running process shares: logging, metrics endpoint, shutdown on SIGTERM."""
