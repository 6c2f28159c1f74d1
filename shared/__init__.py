"""Contracts shared by the cloud trainer and the edge agent.

Pure code only: no file, network or process I/O, and no heavy imports (TensorFlow, Flask, paho,
numpy). Both sides import from here; nothing here imports from either side.
"""

CONTRACT_VERSION = 1
