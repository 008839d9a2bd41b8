"""Window math over event time: tiles for sliding windows, tumbling periods for the feature log. Pure."""
