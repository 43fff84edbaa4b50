import sys

from fedmekt_cli.main import main

sys.exit(main())
