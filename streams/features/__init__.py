"""The declarative feature list and the per-entity state that computes it."""
