"""Shared pieces of windfarm-etl: settings, database engines, the target schema."""
