"""Make the helpers beside these tests importable (pytest runs with --import-mode=importlib)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
