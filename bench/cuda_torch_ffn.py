#!/usr/bin/env python3
"""The PyTorch peer of dmoe_bench_cuda: the ffn expert's forward+backward in PyTorch eager on the same GPU.

Usage: python3 bench/cuda_torch_ffn.py HIDDEN BATCH ITERATIONS REPEATS [TF32]
Builds y = LayerNorm(x + fc2(GELU_tanh(fc1(x)))) in f32 (TF32 off, as dmoe's default; TF32=1 allows it in the
GEMMs, as dmoe's cuda::set_tf32(true)), and prints one JSON line:
{"hidden":H,"batch":B,"ms":best mean milliseconds of one forward+backward,"torch":version,"gpu":name}, timed with
CUDA events (ITERATIONS passes, best of REPEATS, after warm-up). Without PyTorch or without a GPU it prints
{"error":reason} and exits 3, so the benchmark goes on without its peer and says why.
"""
import json
import sys


def main():
    hidden, batch, iterations, repeats = (int(v) for v in sys.argv[1:5])
    tf32 = len(sys.argv) > 5 and sys.argv[5] == "1"
    try:
        import torch
        import torch.nn.functional as F
    except Exception as e:
        print(json.dumps({"error": f"import torch failed: {e!r}"}))
        return 3
    if not torch.cuda.is_available():
        print(json.dumps({"error": f"torch {torch.__version__} sees no CUDA GPU"}))
        return 3
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    device = torch.device("cuda:0")
    torch.manual_seed(0)
    fc1 = torch.nn.Linear(hidden, 4 * hidden).to(device)
    fc2 = torch.nn.Linear(4 * hidden, hidden).to(device)
    norm = torch.nn.LayerNorm(hidden, eps=1e-5).to(device)
    x = torch.randn(batch, hidden, device=device, requires_grad=True)
    dy = torch.randn(batch, hidden, device=device)

    def step():
        y = norm(x + fc2(F.gelu(fc1(x), approximate="tanh")))
        y.backward(dy)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iterations):
            step()
        stop.record()
        stop.synchronize()
        best = min(best, start.elapsed_time(stop) / iterations)
    print(json.dumps({"hidden": hidden, "batch": batch, "tf32": tf32, "ms": best, "torch": torch.__version__,
                      "gpu": torch.cuda.get_device_name(0)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
