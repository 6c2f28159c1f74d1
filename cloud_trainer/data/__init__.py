"""The trainer's data: the events and items interchange tables, converters from public datasets
to them, and the training set built from the events."""
