"""``python -m prefect_dintero.emulator`` serves the emulator (``prefect-dintero emulator``)."""

import sys

from prefect_dintero.emulator.command import main

sys.exit(main())
