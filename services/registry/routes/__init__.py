"""One router per resource of the Confluent REST API: subjects, schemas, compatibility, config, ops."""
