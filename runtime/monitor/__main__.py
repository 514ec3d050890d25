"""`python -m populace.runtime.monitor RUN_DIR [--host H --port P]`: serve the page for one run (the CLI's child process)."""
import sys

from .page import main

sys.exit(main())
