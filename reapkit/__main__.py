import sys

from reapkit.run.cli import main

sys.exit(main())
