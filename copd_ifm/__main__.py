"""``python -m copd_ifm`` (the form torchrun launches)."""
import sys

from copd_ifm.cli import main

sys.exit(main())
