"""The package version (kept in one place; pyproject.toml reads it)."""
VERSION = "2026.1.0.dev1"
