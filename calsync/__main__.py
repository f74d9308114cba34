import sys

from calsync.cli import main

sys.exit(main())
