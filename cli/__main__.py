"""``python -m prefect_dintero.cli`` is ``prefect-dintero``."""

import sys

from prefect_dintero.cli import main

sys.exit(main())
