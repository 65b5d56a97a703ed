"""``python -m softdistill ...`` (the form torchrun uses)."""

import sys

from softdistill.cli import main

sys.exit(main())
