"""``python -m ddpm``: the ``ddpm`` command (so ``torchrun -m ddpm train ...`` works too)."""

import sys

from ddpm.cli import main

sys.exit(main())
