"""``python -m benchmarks.faults``: see run.py."""

import sys

from benchmarks.faults.run import main

sys.exit(main())
