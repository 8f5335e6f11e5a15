"""``python -m medvideocap.train``: the same click command as ``medvideocap train``, one parser for both
(``accelerate launch -m medvideocap.train`` and ``torchrun -m medvideocap.train`` run this on each rank)."""

import logging

from medvideocap.cli.train import command

logging.basicConfig(level=logging.INFO, format="%(message)s")
command.main(prog_name="python -m medvideocap.train")
