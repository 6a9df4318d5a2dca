"""`python -m peftlab.dashboard`: serve the results dashboard on 127.0.0.1 (see peftlab/dashboard/__init__.py)."""
from peftlab.dashboard import main

raise SystemExit(main())
