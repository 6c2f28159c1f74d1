"""``cloud-trainer console``: its arguments, and serving :mod:`.app` with waitress on one address.

The fleet's statuses come from a :class:`cloud_trainer.delivery.fleet_status.FleetWatcher` on one
MQTT connection held for the console's life. The access rules (:mod:`.access`) are checked before
anything is bound or connected.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from cloud_trainer.console.access import TOKEN_ENV, check_binding, load_token

log = logging.getLogger(__name__)
DEFAULT_PORT = 8090


def add_parser(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
               add_broker_args: Callable[..., None]) -> None:
    p = sub.add_parser("console", help="a read-only web page of the fleet (statuses, rollouts, outcomes), the "
                                       "evaluation reports of a runs folder and a recommendation preview")
    p.add_argument("--fleet", default="default")
    p.add_argument("--runs", type=Path, help="folder of run directories (evaluation.json, bundle/)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default loopback; any other needs a token)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}; 0 picks a free one")
    p.add_argument("--token-file", type=Path,
                   help=f"file (mode 0600) holding the token every request must carry (Bearer, or Basic's "
                        f"password); or set {TOKEN_ENV}. Required unless --host is a loopback address")
    p.add_argument("--public-key", type=Path,
                   help="signing.pub: check each run bundle's signature before the preview loads it")
    p.add_argument("--refresh", type=int, default=5, help="seconds between reloads of the fleet page")
    add_broker_args(p, client_id="cloud-trainer-console")
    p.set_defaults(handler=run_console)


def run_console(args: argparse.Namespace) -> int:
    import waitress

    from cloud_trainer.commands import _broker_options
    from cloud_trainer.console.app import ConsoleConfig, ConsoleServices, create_app
    from cloud_trainer.console.preview import Previewer
    from cloud_trainer.delivery.broker import BrokerConnection
    from cloud_trainer.delivery.fleet_status import FleetWatcher

    token = load_token(args.token_file)
    check_binding(args.host, token)
    with BrokerConnection(_broker_options(args)) as connection:
        watcher = FleetWatcher(connection, args.fleet)
        app = create_app(ConsoleConfig(args.fleet, args.runs, token, max(1, args.refresh)),
                         ConsoleServices(watcher.statuses, Previewer(args.public_key)))
        server = waitress.create_server(app, host=args.host, port=args.port, threads=4,  # type: ignore[attr-defined]
                                        ident="edge-rec-console")
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(f"console of fleet {args.fleet} on http://{host}:{server.effective_port}/ "
              f"({'token required' if token else 'loopback, no token'})", flush=True)
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))  # closes the server and connection
        try:
            server.run()
        except KeyboardInterrupt:
            pass
        finally:
            server.close()
    print("console stopped", file=sys.stderr)
    return 0
