"""Contracts shared by the cloud trainer and the edge agent.

Pure code only: no file, network or process I/O, and no heavy imports (TensorFlow, Keras, Flask,
paho). numpy is the one array library both sides hold, and the recommendation logic both run
(:mod:`shared.recommendation`) uses it. Both sides import from here; nothing here imports from
either side.
"""

#: The model contract bundles of pooled models are written with. 2: the graph takes a filter mask
#: over the catalogue (``item_allowed``, see :mod:`shared.recommendation`); 1: it does not.
CONTRACT_VERSION = 2
#: The contract of sequence models (``--model transformer``): the graph takes each history
#: position's event kind and time-gap bucket (:mod:`shared.sequence`) in place of the weights.
#: Agents that accept only (1, 2) refuse such a bundle before downloading it.
SEQUENCE_CONTRACT_VERSION = 3
#: What agents accept: version 1 models are filtered after their top K.
SUPPORTED_CONTRACT_VERSIONS = (1, 2, 3)
