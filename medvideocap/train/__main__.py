"""``python -m medvideocap.train``: the same command as ``medvideocap train``."""

from medvideocap.train import main

raise SystemExit(main())
