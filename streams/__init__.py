"""Stream processing: features, windows, flows, sinks, replay, training export and drift."""
