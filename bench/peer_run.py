"""What the peer benchmarks (pufferlib_cartpole.py, sample_factory_cartpole.py)
share: their command line split at `--` and a process's peak memory."""

import argparse
import sys


def parse_with_passthrough(parser: argparse.ArgumentParser):
    """The script's own arguments, and those after `--` for the peer's trainer."""
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    return parser.parse_args(argv[:split]), argv[split + 1 :]


def peak_rss_bytes(pid):
    """VmHWM of a process, in bytes; None if it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
