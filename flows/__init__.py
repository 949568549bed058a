"""Prefect flows: each composes tasks into one pipeline readable on one screen."""
