"""``python -m app``: the ``kdflow`` command line without the console script."""

from app.cli import main

main()
