"""The ``dashboard`` plugin: contributes ``hookqueue dashboard``.

Loaded through the ``hookqueue`` entry points by every queue and by the CLI, so it imports
nothing heavy: it only checks that the ``web`` extra is installed. Without it the import
fails with the install command, and ``hookqueue plugins`` lists the plugin as unavailable
(the other plugins load as usual).

``hookqueue dashboard`` binds 127.0.0.1 unless another ``--host`` is given.
"""

from __future__ import annotations

import argparse
import importlib.util

from hookqueue.core.hookspecs import hookimpl
from hookqueue.core.models import CliCommand

__all__ = ["DASHBOARD_COMMAND", "DEFAULT_HOST", "DEFAULT_PORT", "INSTALL_HINT", "REQUIRED"]

#: The modules the ``web`` extra brings.
REQUIRED = ("starlette", "jinja2", "uvicorn", "multipart")
#: What to run when one is missing.
INSTALL_HINT = "pip install 'hookqueue[web]'"
#: ``hookqueue dashboard`` serves on 127.0.0.1:8765 unless told otherwise.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765

_missing = [name for name in REQUIRED if importlib.util.find_spec(name) is None]
if _missing:
    raise ImportError(
        f"the dashboard needs {', '.join(_missing)}: unavailable — {INSTALL_HINT}",
        name=_missing[0],
    )


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0-65535)") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0-65535)")
    return value


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to bind (default {DEFAULT_HOST}: this machine only; 0.0.0.0 for all)",
    )
    parser.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}; 0 picks one"
    )
    parser.add_argument(
        "--read-only",
        action="store_true",
        help="no action buttons; every POST is refused with 403",
    )
    parser.add_argument(
        "--root-path",
        default="",
        help="the URL prefix when served behind a proxy under a sub-path (e.g. /queue)",
    )


def _run(args: argparse.Namespace) -> int:
    import contextlib
    import signal
    import socket
    import threading
    from collections.abc import Iterator

    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, except that SIGINT and SIGTERM end ``run()`` normally (exit
        code 0, like ``hookqueue metrics serve``) instead of being raised again after the
        graceful shutdown."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {
                sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)
            }
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    from hookqueue.core.cli import queue_from_args

    from .app import create_app

    with queue_from_args(args) as queue:
        app = create_app(queue, read_only=args.read_only)
        config = uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            root_path=args.root_path,
            log_level="info" if getattr(args, "verbose", False) else "warning",
            access_log=bool(getattr(args, "verbose", False)),
            server_header=False,
        )
        server = Server(config)
        # Bind here, so the address printed is the one listening (also with --port 0).
        family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Connections inherit it: without, uvicorn's separate writes of headers and body on a
        # kept-alive connection wait for a delayed ACK, 40 ms per response.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((args.host, args.port))
        port = sock.getsockname()[1]
        mode = " (read-only)" if args.read_only else ""
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(
            f"serving the dashboard of {queue.db.location}{mode} on http://{host}:{port}/ "
            "(Ctrl-C to stop)",
            flush=True,
        )
        try:
            server.run(sockets=[sock])
        finally:
            sock.close()
    return 0


DASHBOARD_COMMAND = CliCommand(
    name="dashboard",
    help="serve the web dashboard (tasks, actions, workers, plugins) on 127.0.0.1",
    configure=_configure,
    run=_run,
)


@hookimpl
def hookqueue_cli_commands() -> list[CliCommand]:
    """Contribute ``hookqueue dashboard``."""
    return [DASHBOARD_COMMAND]
