"""The embedded schema registry: a Confluent-compatible REST subset over a durable SQLite store.

Refuses schema versions that break Avro compatibility (BACKWARD by default), naming the field at fault.
"""
