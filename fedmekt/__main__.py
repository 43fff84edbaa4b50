import sys

from fedmekt.cli.main import main

sys.exit(main())
