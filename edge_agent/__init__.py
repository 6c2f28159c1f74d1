"""Edge agent: serves on-device recommendations from a signed TFLite bundle.

Pure logic (recommendation, update state machine, crypto envelope) lives in modules with no I/O;
adapters (MQTT, files, interpreter, HTTP) wrap it. Nothing here imports TensorFlow.
"""

__version__ = "0.1.0"
