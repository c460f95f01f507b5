"""PyTorch's CPU conv2d on the shapes of `cargo bench -p fleet-kernels --bench conv`.

Forward, and forward plus backward with and without the input gradient,
for the IMPALA shallow CNN's two layers, one of the deep ResNet's 3x3
convolutions and DQN's three (`nature_cnn`), at the learner benchmark's
batch (32 x 21 images). Median of 7 runs after a warm-up, milliseconds.
PyTorch runs its oneDNN kernels here, its fast path on x86 CPUs.

    OMP_NUM_THREADS=2 python bench/conv_torch.py --threads 2
"""

import argparse
import time

import torch

LAYERS = {
    "conv1 4->16 8x8/4 on 84x84": ([672, 4, 84, 84], [16, 4, 8, 8], 4, 0),
    "conv2 16->32 4x4/2 on 20x20": ([672, 16, 20, 20], [32, 16, 4, 4], 2, 0),
    "deep 16->32 3x3/1 pad 1 on 42x42": ([672, 16, 42, 42], [32, 16, 3, 3], 1, 1),
    "nature1 4->32 8x8/4 on 84x84": ([672, 4, 84, 84], [32, 4, 8, 8], 4, 0),
    "nature2 32->64 4x4/2 on 20x20": ([672, 32, 20, 20], [64, 32, 4, 4], 2, 0),
    "nature3 64->64 3x3/1 on 9x9": ([672, 64, 9, 9], [64, 64, 3, 3], 1, 0),
}


def median_ms(f, reps=7):
    f()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2] * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"PyTorch {torch.__version__}, {args.threads} threads, median of 7")
    for name, (input_shape, weight_shape, stride, padding) in LAYERS.items():
        x = torch.randn(*input_shape)
        x_grad = x.clone().requires_grad_(True)
        w = torch.randn(*weight_shape, requires_grad=True)
        b = torch.zeros(weight_shape[0], requires_grad=True)
        conv = lambda inp: torch.nn.functional.conv2d(inp, w, b, stride, padding)  # noqa: E731
        with torch.no_grad():
            forward = median_ms(lambda: conv(x))
        g = torch.randn_like(conv(x))

        def backward(inp):
            w.grad = b.grad = inp.grad = None
            conv(inp).backward(g)

        no_input_grad = median_ms(lambda: backward(x))
        input_grad = median_ms(lambda: backward(x_grad))
        print(f"{name}: forward {forward:.1f} ms, forward+backward {no_input_grad:.1f} ms (no input grad), {input_grad:.1f} ms (input grad)")


if __name__ == "__main__":
    main()
