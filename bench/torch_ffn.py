#!/usr/bin/env python3
"""The PyTorch peer of dmoe_bench_ops: the ffn expert's forward+backward with dmoe's weights and inputs.

Usage: /usr/bin/python3 bench/torch_ffn.py DIR (dmoe_bench_ops runs it; DIR holds what it wrote).
Reads DIR/meta.txt ("key value" lines: hidden, batch, eps, threads, min_runs, min_seconds) and raw little-endian
f32 files: x.f32 and dy.f32 [batch, hidden], and one file per parameter named as dmoe names it (fc1.weight.f32
[4h, h], fc1.bias.f32, fc2.weight.f32 [h, 4h], fc2.bias.f32, norm.weight.f32, norm.bias.f32). Writes y.f32, dx.f32
and grad.<name>.f32 for that batch and DIR/results.txt (torch_version, threads), prints "ready", then answers each
"time BATCH" line on stdin with "seconds BATCH S" on stdout: the best forward+backward of at least min_runs passes
and min_seconds (random inputs, the same weights; one warm-up pass the first time a batch is asked for). Exits when stdin closes; exits 3 when torch cannot be imported,
with the reason in results.txt.
"""
import sys
import time


def read_meta(path):
    meta = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if parts:
                meta[parts[0]] = parts[1:]
    return meta


def main():
    directory = sys.argv[1]
    meta = read_meta(f"{directory}/meta.txt")
    results = open(f"{directory}/results.txt", "w")
    try:
        import torch
        import torch.nn.functional as F
    except Exception as e:  # the benchmark goes on without its peer and says why
        results.write(f"error import torch failed: {e!r}\n")
        results.close()
        return 3

    hidden = int(meta["hidden"][0])
    batch = int(meta["batch"][0])
    eps = float(meta["eps"][0])
    threads = int(meta["threads"][0])
    torch.set_num_threads(threads)
    torch.manual_seed(int(meta.get("seed", ["0"])[0]))

    class Ffn(torch.nn.Module):
        """y = LayerNorm(x + fc2(GELU_tanh(fc1(x)))), as dmoe's ffn expert."""

        def __init__(self):
            super().__init__()
            self.fc1 = torch.nn.Linear(hidden, 4 * hidden)
            self.fc2 = torch.nn.Linear(4 * hidden, hidden)
            self.norm = torch.nn.LayerNorm(hidden, eps=eps)

        def forward(self, x):
            return self.norm(x + self.fc2(F.gelu(self.fc1(x), approximate="tanh")))

    def load(name, shape):
        with open(f"{directory}/{name}.f32", "rb") as f:
            data = bytearray(f.read())
        return torch.frombuffer(data, dtype=torch.float32).reshape(shape).clone()

    def save(name, t):
        with open(f"{directory}/{name}.f32", "wb") as f:
            f.write(t.detach().contiguous().numpy().astype("<f4").tobytes())

    model = Ffn()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(load(name, tuple(p.shape)))

    x = load("x", (batch, hidden)).requires_grad_(True)
    dy = load("dy", (batch, hidden))
    y = model(x)
    y.backward(dy)
    save("y", y)
    save("dx", x.grad)
    for name, p in model.named_parameters():
        save(f"grad.{name}", p.grad)

    results.write(f"torch_version {torch.__version__}\n")
    results.write(f"threads {torch.get_num_threads()}\n")
    results.close()
    print("ready", flush=True)

    min_runs = int(meta["min_runs"][0])
    min_seconds = float(meta["min_seconds"][0])
    inputs = {}

    def step(x, dy):
        model.zero_grad(set_to_none=True)  # torch's fastest: new gradients are assigned, not added
        x.grad = None
        model(x).backward(dy)

    for line in sys.stdin:  # "time BATCH" until stdin closes
        parts = line.split()
        if len(parts) != 2 or parts[0] != "time":
            continue
        b = int(parts[1])
        if b not in inputs:
            inputs[b] = (torch.randn(b, hidden).requires_grad_(True), torch.randn(b, hidden))
            step(*inputs[b])  # warm up at a new batch: allocator, thread pool, kernels
        xb, dyb = inputs[b]
        best, runs, total = float("inf"), 0, 0.0
        while runs < min_runs or total < min_seconds:
            start = time.perf_counter()
            step(xb, dyb)
            dt = time.perf_counter() - start
            best = min(best, dt)
            total += dt
            runs += 1
        print(f"seconds {b} {best:.9f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
