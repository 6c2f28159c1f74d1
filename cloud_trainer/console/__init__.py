"""``cloud-trainer console``: a read-only web page of the fleet (statuses over MQTT, rollouts,
outcomes), of the evaluation reports under a runs folder, and a recommendation preview.

- :mod:`.access`: who may read it (loopback, or a token; pure checks).
- :mod:`.fleet_view`: the fleet's statuses laid out for the page (pure).
- :mod:`.report_view`: a run's ``evaluation.json`` as tables and inline SVG plots (pure but for reading).
- :mod:`.preview`: a run's bundle behind :func:`shared.recommendation.recommend`, as agents serve it.
- :mod:`.app`: the Flask app factory; :mod:`.command`: the subcommand and its server (waitress).
"""
