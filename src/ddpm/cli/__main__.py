import sys

from ddpm.cli import main

sys.exit(main())
