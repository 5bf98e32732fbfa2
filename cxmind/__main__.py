import sys

from cxmind.cli import main

sys.exit(main())
