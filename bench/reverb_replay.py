"""The `fleet bench replay` workload against DeepMind Reverb.

Same shapes, table (prioritised, exponent 0.8, FIFO remover, MinSize(1)),
client counts, batch size and duration as `fleet bench replay`; every client
is its own process (Python clients share a GIL otherwise) and closed-loop:
an insert is timed from append until the writer's flush returns, a batch
from the sample call until its last item arrives. The server runs in its
own process so that its peak resident memory can be read from /proc.

Run through bench/replay_vs_reverb.sh, which installs Reverb into a venv.
"""

import argparse
import multiprocessing as mp
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


def serve(max_size, port_queue, stop):
    import reverb

    table = reverb.Table(
        name=TABLE,
        sampler=reverb.selectors.Prioritized(0.8),
        remover=reverb.selectors.Fifo(),
        max_size=max_size,
        rate_limiter=reverb.rate_limiters.MinSize(1),
    )
    server = reverb.Server(tables=[table], port=None)
    port_queue.put(server.port)
    stop.wait()
    server.stop()


def sequence(steps, frame, actor):
    # Random bytes: incompressible, so Reverb's chunk compression gains nothing
    # and costs what it costs.
    rng = np.random.default_rng(actor)
    return rng.integers(0, 256, size=(steps,) + frame, dtype=np.uint8)


def inserter(port, steps, frame, period, actor, seconds, start, results):
    import reverb

    client = reverb.Client(f"127.0.0.1:{port}")
    item = sequence(steps, frame, actor)
    latencies = []
    start.wait()
    deadline = time.monotonic() + seconds
    if period == steps:
        # Independent items: the whole item as one step, one chunk per item.
        with client.trajectory_writer(num_keep_alive_refs=1) as writer:
            while time.monotonic() < deadline:
                sent = time.perf_counter()
                writer.append({"observations": item})
                writer.create_item(TABLE, priority=1.0, trajectory={"observations": writer.history["observations"][-1]})
                writer.flush()
                latencies.append(time.perf_counter() - sent)
    else:
        # Overlapping windows: one step per frame; each item references the
        # last `steps` of them, so only the `period` new frames are sent.
        with client.trajectory_writer(num_keep_alive_refs=steps) as writer:
            appended = 0
            while time.monotonic() < deadline:
                sent = time.perf_counter()
                new = steps if appended == 0 else period
                for t in range(new):
                    writer.append({"observations": item[(appended + t) % steps]})
                appended += new
                writer.create_item(TABLE, priority=1.0, trajectory={"observations": writer.history["observations"][-steps:]})
                writer.flush()
                latencies.append(time.perf_counter() - sent)
    results.put(("insert", len(latencies), latencies))


def sampler(port, batch_size, seconds, start, results):
    import reverb

    client = reverb.Client(f"127.0.0.1:{port}")
    latencies = []
    count = 0
    start.wait()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sent = time.perf_counter()
        got = sum(1 for _ in client.sample(TABLE, num_samples=batch_size))
        latencies.append(time.perf_counter() - sent)
        count += got
    results.put(("sample", count, latencies))


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def percentile_ms(latencies, q):
    if not latencies:
        return float("nan")
    ordered = sorted(latencies)
    return ordered[round((len(ordered) - 1) * q)] * 1e3


def run(workload, args):
    name, steps, frame, period, max_size = workload
    ctx = mp.get_context("spawn")
    port_queue, stop, start, results = ctx.Queue(), ctx.Event(), ctx.Event(), ctx.Queue()
    server = ctx.Process(target=serve, args=(max_size, port_queue, stop))
    server.start()
    port = port_queue.get(timeout=120)
    clients = [
        ctx.Process(target=inserter, args=(port, steps, frame, period, actor + 1, args.seconds, start, results))
        for actor in range(args.inserters)
    ] + [ctx.Process(target=sampler, args=(port, args.batch_size, args.seconds, start, results)) for _ in range(args.samplers)]
    for client in clients:
        client.start()
    # Clients import TensorFlow first; start the clock once they all can go.
    time.sleep(args.warmup)
    began = time.monotonic()
    start.set()
    tallies = {"insert": [0, []], "sample": [0, []]}
    for _ in clients:
        kind, count, latencies = results.get(timeout=args.seconds + 300)
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
        f"{percentile_ms(insert_latencies, 0.5):.2f} / {percentile_ms(insert_latencies, 0.99):.2f} | "
        f"{percentile_ms(sample_latencies, 0.5):.2f} / {percentile_ms(sample_latencies, 0.99):.2f} | {peak:.0f} | – |",
        flush=True,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inserters", type=int, default=4)
    parser.add_argument("--samplers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds for the client processes to start")
    parser.add_argument("--workload", action="append", default=[])
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
