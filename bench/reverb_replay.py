"""The `fleet bench replay` workload against DeepMind Reverb.

Same shapes, table (prioritised, exponent 0.8, FIFO remover, MinSize(1)),
client counts, batch size, prefill and duration as `fleet bench replay`;
every client is its own process (Python clients share a GIL otherwise). The
server runs in its own process so that its peak resident memory can be read
from /proc.

By default clients use Reverb's fast paths, as its documentation recommends
for throughput. An inserter creates items on a `TrajectoryWriter` without
waiting for each: every `--inserts-in-flight / 2` items it calls
`flush(block_until_num_items=--inserts-in-flight / 2)`, so between half and
all of `--inserts-in-flight` items are unconfirmed at any time. A sampler
reads batches from a `TrajectoryDataset` that keeps
`--batches-in-flight * --batch-size` samples in flight on its stream.

With --closed-loop every client keeps one request in flight instead: an
insert is timed from append until the writer's flush returns, a batch from
the `Client.sample` call until its last item arrives.

Run through bench/replay_vs_reverb.sh, which installs Reverb into a venv.
"""

import argparse
import multiprocessing as mp
import queue as queue_lib
import time

import numpy as np

TABLE = "bench"
# name, steps, frame shape, period, table capacity: as fleet's WORKLOADS
# (src/bench/replay.rs). A period below the steps makes a writer's items
# overlap: R2D2's windows of 80 steps every 40.
WORKLOADS = [
    ("1KiB", 8, (128,), 8, 100_000),
    ("100KiB", 8, (12_800,), 8, 4_000),
    ("r2d2-80x84x84", 80, (84, 84), 40, 500),
]


def sequence(steps, frame, actor):
    # Random bytes: incompressible, so Reverb's chunk compression gains nothing
    # and costs what it costs.
    rng = np.random.default_rng(actor)
    return rng.integers(0, 256, size=(steps,) + frame, dtype=np.uint8)


def serve(steps, frame, max_size, port_queue, stop):
    import reverb
    import tensorflow as tf

    table = reverb.Table(
        name=TABLE,
        sampler=reverb.selectors.Prioritized(0.8),
        remover=reverb.selectors.Fifo(),
        max_size=max_size,
        rate_limiter=reverb.rate_limiters.MinSize(1),
        # What a TrajectoryDataset reads to know the items' shape.
        signature={"observations": tf.TensorSpec((steps,) + frame, tf.uint8)},
    )
    server = reverb.Server(tables=[table], port=None)
    port_queue.put(server.port)
    stop.wait()
    server.stop()


class Writer:
    """One stream of items on a TrajectoryWriter, in the workload's shape."""

    def __init__(self, writer, steps, frame, period, actor):
        self.writer = writer
        self.item = sequence(steps, frame, actor)
        self.steps = steps
        self.period = period
        self.appended = 0

    def create(self):
        if self.period == self.steps:
            # Independent items: the whole item as one step, one chunk per item.
            self.writer.append({"observations": self.item})
            trajectory = {"observations": self.writer.history["observations"][-1]}
        else:
            # Overlapping windows: one step per frame; each item references
            # the last `steps` of them, so only the `period` new frames are sent.
            new = self.steps if self.appended == 0 else self.period
            for t in range(new):
                self.writer.append({"observations": self.item[(self.appended + t) % self.steps]})
            self.appended += new
            trajectory = {"observations": self.writer.history["observations"][-self.steps :]}
        self.writer.create_item(TABLE, priority=1.0, trajectory=trajectory)


def prefiller(port, workload, items, ready):
    """Inserts `items` whole items, pipelined, then reports ready. A client
    of its own, so that the server's peak memory holds none of its buffers."""
    import reverb

    _, steps, frame, _, max_size = workload
    client = reverb.Client(f"127.0.0.1:{port}")
    with client.trajectory_writer(num_keep_alive_refs=1) as trajectory_writer:
        writer = Writer(trajectory_writer, steps, frame, steps, 0)
        for created in range(1, min(items, max_size) + 1):
            writer.create()
            if created % 128 == 0:
                trajectory_writer.flush(block_until_num_items=128)
    ready.put("prefill")


def inserter(port, workload, actor, args, ready, start, results):
    import reverb

    _, steps, frame, period, _ = workload
    client = reverb.Client(f"127.0.0.1:{port}")
    latencies = []
    created = 0
    keep_alive = 1 if period == steps else steps
    with client.trajectory_writer(num_keep_alive_refs=keep_alive) as trajectory_writer:
        writer = Writer(trajectory_writer, steps, frame, period, actor)
        ready.put(actor)
        start.wait()
        deadline = time.monotonic() + args.seconds
        if args.closed_loop:
            while time.monotonic() < deadline:
                sent = time.perf_counter()
                writer.create()
                trajectory_writer.flush()
                latencies.append(time.perf_counter() - sent)
                created += 1
        else:
            half = max(args.inserts_in_flight // 2, 1)
            while time.monotonic() < deadline:
                writer.create()
                created += 1
                if created % half == 0:
                    trajectory_writer.flush(block_until_num_items=half)
        # Every item counted is confirmed by the server.
        trajectory_writer.flush()
    results.put(("insert", created, latencies))


def sampler(port, workload, index, args, ready, start, results):
    import reverb

    address = f"127.0.0.1:{port}"
    latencies = []
    count = 0
    if args.closed_loop:
        client = reverb.Client(address)
        ready.put(index)
        start.wait()
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            sent = time.perf_counter()
            got = sum(1 for _ in client.sample(TABLE, num_samples=args.batch_size))
            latencies.append(time.perf_counter() - sent)
            count += got
    else:
        dataset = reverb.TrajectoryDataset.from_table_signature(
            server_address=address,
            table=TABLE,
            max_in_flight_samples_per_worker=args.batches_in_flight * args.batch_size,
        ).batch(args.batch_size, drop_remainder=True)
        batches = iter(dataset)
        ready.put(index)
        start.wait()
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            batch = next(batches)
            count += int(batch.data["observations"].shape[0])
    results.put(("sample", count, latencies))


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def percentile_ms(latencies, q):
    ordered = sorted(latencies)
    return ordered[round((len(ordered) - 1) * q)] * 1e3


def milliseconds(latencies):
    if not latencies:
        return "–"
    return f"{percentile_ms(latencies, 0.5):.2f} / {percentile_ms(latencies, 0.99):.2f}"


def wait_for(queue, processes, seconds):
    """The next message on `queue`; fails as soon as any of `processes` has failed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            return queue.get(timeout=1)
        except queue_lib.Empty:
            failed = [p.name for p in processes if p.exitcode not in (None, 0)]
            if failed:
                for process in processes:
                    process.kill()
                raise RuntimeError(f"{', '.join(failed)} failed (see its traceback above)")
    raise TimeoutError(f"nothing arrived within {seconds} s")


def run(workload, args):
    name, steps, frame, period, max_size = workload
    ctx = mp.get_context("spawn")
    port_queue, stop, ready, start, results = ctx.Queue(), ctx.Event(), ctx.Queue(), ctx.Event(), ctx.Queue()
    server = ctx.Process(target=serve, args=(steps, frame, max_size, port_queue, stop))
    server.start()
    port = wait_for(port_queue, [server], 600)
    clients = [
        ctx.Process(target=inserter, args=(port, workload, actor + 1, args, ready, start, results))
        for actor in range(args.inserters)
    ] + [ctx.Process(target=sampler, args=(port, workload, index, args, ready, start, results)) for index in range(args.samplers)]
    helpers = [ctx.Process(target=prefiller, args=(port, workload, args.prefill, ready))] if args.prefill else []
    for process in helpers + clients:
        process.start()
    # Clients import TensorFlow and connect, and the table fills, first; the
    # clock starts once every one of them is ready.
    for _ in helpers + clients:
        wait_for(ready, helpers + clients + [server], 600)
    for helper in helpers:
        helper.join()
    began = time.monotonic()
    start.set()
    tallies = {"insert": [0, []], "sample": [0, []]}
    for _ in clients:
        kind, count, latencies = wait_for(results, clients + [server], args.seconds + 300)
        tallies[kind][0] += count
        tallies[kind][1] += latencies
    elapsed = time.monotonic() - began
    for client in clients:
        client.join()
    peak = peak_rss_mib(server.pid)
    stop.set()
    server.join(timeout=30)
    item_bytes = steps * int(np.prod(frame))
    inserts, insert_latencies = tallies["insert"]
    samples, sample_latencies = tallies["sample"]
    print(
        f"| {name} | {item_bytes} | {inserts / elapsed:.0f} | {samples / elapsed:.0f} | "
        f"{inserts * item_bytes / elapsed / 1e6:.1f} | {samples * item_bytes / elapsed / 1e6:.1f} | "
        f"{milliseconds(insert_latencies)} | {milliseconds(sample_latencies)} | {peak:.0f} | – |",
        flush=True,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inserters", type=int, default=4)
    parser.add_argument("--samplers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workload", action="append", default=[])
    parser.add_argument("--inserts-in-flight", type=int, default=256, help="unconfirmed items per inserter, at most")
    parser.add_argument("--batches-in-flight", type=int, default=8, help="batches of samples in flight per sampler")
    parser.add_argument("--closed-loop", action="store_true", help="one request in flight per client")
    parser.add_argument("--prefill", type=int, default=0, help="items inserted before the clock starts")
    args = parser.parse_args()
    print(
        "| workload | item bytes | inserts/s | samples/s | insert MB/s | sample MB/s | "
        "insert p50 / p99 ms | sample batch p50 / p99 ms | server peak RSS MiB | stored B/step |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for workload in WORKLOADS:
        if not args.workload or workload[0] in args.workload:
            run(workload, args)


if __name__ == "__main__":
    main()
