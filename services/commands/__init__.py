"""Sub-commands of the `streamml` CLI, one module each, registered by `services.cli`."""
