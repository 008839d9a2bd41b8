"""The embedded stack: find server binaries, start/stop/supervise local processes."""
