import sys

from multimoe.cli import main

sys.exit(main())
