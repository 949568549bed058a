"""kdflow: knowledge distillation as a production pipeline (library part; never imports Prefect)."""

__version__ = "0.1.0"
