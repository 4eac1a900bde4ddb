"""rlrun: a config-driven deep reinforcement learning experiment runner."""

from pathlib import Path

__version__ = "0.1.0"

#: The repository's `conf/` directory (the package is installed editable, see the Makefile).
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
