import sys

from ensemble_platform.service.cli import main

sys.exit(main())
