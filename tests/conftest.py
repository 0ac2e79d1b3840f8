import sys
from pathlib import Path

# `from helpers import ...` in tests; appended so that it never shadows the packages.
sys.path.append(str(Path(__file__).parent))
