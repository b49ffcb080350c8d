"""``python -m trainer`` runs the same command line as the ``trainer`` script."""

from trainer.cli import main

main()
