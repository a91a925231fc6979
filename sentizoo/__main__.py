"""`python -m sentizoo`: the same command line as the `sentizoo` console script."""
from .cli import main

raise SystemExit(main())
