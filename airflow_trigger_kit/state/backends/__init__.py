"""Interchangeable storage for ProcessState: SQLite (embedded default) and PostgreSQL."""
