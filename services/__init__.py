"""Long-running processes people talk to: inference, ops, registry, CLI and the local stack."""
