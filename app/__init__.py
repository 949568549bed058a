"""The ``kdflow`` command line (typer): the application layer on top of the flows, tasks and library.

Layering (enforced by import-linter, see pyproject.toml): ``app`` > ``flows`` > ``tasks`` > ``kdflow``.
"""
