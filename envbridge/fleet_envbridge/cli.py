"""The `fleet-envbridge` command: serves the Env service until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from .server import DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_STREAMS, serve

# Seconds open streams get to finish when the server stops.
SHUTDOWN_GRACE_SECONDS = 2.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fleet-envbridge",
        description="Serve Gymnasium (or envpool) environment vectors to fleet over gRPC.",
    )
    parser.add_argument(
        "--listen",
        default="127.0.0.1:0",
        metavar="ADDR",
        help="host:port (port 0 picks a free one) or unix:/path/to.sock (default %(default)s)",
    )
    parser.add_argument(
        "--max-message-bytes",
        type=int,
        default=DEFAULT_MAX_MESSAGE_BYTES,
        help="largest gRPC message sent or received, e.g. a vector of Atari frames (default %(default)s)",
    )
    parser.add_argument(
        "--max-streams",
        type=int,
        default=DEFAULT_MAX_STREAMS,
        help="environment vectors served at once; more are refused (default %(default)s)",
    )
    parser.add_argument(
        "--exit-with-stdin",
        action="store_true",
        help="stop when stdin closes, i.e. when the parent process that started the server dies",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level on stderr (default %(default)s)")
    return parser.parse_args(argv)


def wait_for_stdin_to_close(stop: threading.Event) -> None:
    """Sets `stop` once stdin reaches end of file."""
    while sys.stdin.buffer.read(4096):
        pass
    stop.set()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        server, address = serve(args.listen, args.max_message_bytes, args.max_streams)
    except RuntimeError as error:
        print(f"fleet-envbridge: {error}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda *_: stop.set())
    if args.exit_with_stdin:
        threading.Thread(target=wait_for_stdin_to_close, args=(stop,), name="stdin-watch", daemon=True).start()
    # The one line a parent process waits for.
    print(f"listening on {address}", flush=True)
    stop.wait()
    server.stop(SHUTDOWN_GRACE_SECONDS).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
