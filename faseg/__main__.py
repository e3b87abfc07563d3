import sys

from faseg.cli import main

sys.exit(main())
