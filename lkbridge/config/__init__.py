"""Configuration: TOML in and out, the schema, frozen typed models and secret references."""
