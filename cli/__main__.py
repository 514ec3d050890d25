"""`python -m populace.cli ARGS` runs the `populace` command."""
import sys

from .main import main

sys.exit(main(sys.argv[1:]))
