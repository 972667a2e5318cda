"""``python -m gold.cli …``: the ``gold`` command (``accelerate launch -m gold.cli train …`` uses this)."""

import sys

from gold.cli.parser import main

sys.exit(main())
