"""Prefect tasks: thin wrappers around kdflow library calls (retries, logging, artifacts)."""

from kdflow.redact import install_log_redaction

# Every task and flow run log passes through this filter first: URIs with passwords and credential values are masked
# before Prefect ships the record to its API (and the UI).
install_log_redaction()
