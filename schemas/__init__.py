"""Data contracts: Avro schemas, the topic map, the wire codec and the schema-registry client."""
