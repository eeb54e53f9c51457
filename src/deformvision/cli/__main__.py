"""``python -m deformvision.cli``."""

import sys

from deformvision.cli import main

sys.exit(main())
