"""From a trained run to the fleet: the TFLite export and its gates, signed bundles, the broker
connection, publishing, rollouts and the fleet's statuses."""
