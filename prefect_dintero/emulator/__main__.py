"""``python -m prefect_dintero.emulator`` is ``prefect-dintero emulator``."""

import sys

from prefect_dintero.cli import main

sys.exit(main(["emulator", *sys.argv[1:]]))
