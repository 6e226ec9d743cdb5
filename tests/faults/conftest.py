import sys
from pathlib import Path

# the fault-injection helpers (faultkit, families) are shared with benchmarks/faults.py
sys.path.insert(0, str(Path(__file__).parent))
