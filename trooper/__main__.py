"""``python -m trooper`` runs the command line."""

from trooper.cli import main

main()
