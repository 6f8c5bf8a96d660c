"""`python -m testbed --client-dirs A,B --output-dir OUT [--entry APP/main.py] ...` (same as `main.py simulate`)."""
import sys

from testbed.cli import main

sys.exit(main(sys.argv[1:]))
