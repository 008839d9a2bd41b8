"""One router per resource: predictions, models, health."""
