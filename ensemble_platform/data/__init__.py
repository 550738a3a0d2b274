"""Dataset specs, loading, schema inference, validation and splitting."""
