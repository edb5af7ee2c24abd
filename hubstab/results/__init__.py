"""Results files: records, validation, reading and writing."""
