"""A fleet simulation: thousands of lightweight simulated agents (asyncio MQTT clients speaking the
agent's protocol) against a real Mosquitto and a real nginx origin, for ``bench/fleet_scale.py``
and ``tests/test_fleet_scale_sim.py``. See bench/README.md (fleet_scale) for what is measured.
"""
