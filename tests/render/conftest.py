"""Make the helpers beside these tests (test_golden, test_rayservice) importable in any collection order."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
