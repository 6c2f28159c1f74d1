"""Contracts shared by the cloud trainer and the edge agent.

Pure code only: no file, network or process I/O, and no heavy imports (TensorFlow, Keras, Flask,
paho). numpy is the one array library both sides hold, and the recommendation logic both run
(:mod:`shared.recommendation`) uses it. Both sides import from here; nothing here imports from
either side.
"""

#: The model contract bundles are written with. 2: the graph takes a filter mask over the
#: catalogue (``item_allowed``, see :mod:`shared.recommendation`); 1: it does not.
CONTRACT_VERSION = 2
#: What agents accept: version 1 models are filtered after their top K.
SUPPORTED_CONTRACT_VERSIONS = (1, 2)
