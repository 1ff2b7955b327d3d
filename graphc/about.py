"""What every layer may ask of the package itself: its version and where its files are."""

from pathlib import Path

__version__ = "0.1.0"
PACKAGE_DIR = Path(__file__).resolve().parent  # graphc/; in a source checkout, its parent is the repository
