"""The inference service (FastAPI + River) and its learner: features from Redis, scores over HTTP,
every prediction logged to `predictions`, models learned from `labels` and versioned in a model store.
"""
