"""Cloud trainer: learns the recommendation model, exports it to TFLite, signs and publishes it."""

__version__ = "0.1.0"
