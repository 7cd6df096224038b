"""The shell beneath the scripts: running a training, its checkpoints, its configuration, files in and out, and
scores. The model itself is the core at the top level (modules.py, the bottlenecks, the prior), which imports nothing
from here."""
