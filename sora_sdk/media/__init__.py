"""Media objects: local sources and remote tracks."""
