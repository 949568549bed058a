"""Prefect tasks: thin wrappers around kdflow library calls (retries, logging, artifacts)."""
