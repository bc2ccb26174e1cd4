"""``python -m sandbox.worker``: how the host starts a worker (or the template) process."""

import sys

from sandbox.worker.main import main

sys.exit(main())
