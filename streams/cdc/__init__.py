"""Change data capture from PostgreSQL logical replication (pgoutput) to Debezium-style Avro envelopes."""
