"""torch.matmul side of examples/bench_matmul.rs: x (m, k) times w (n, k) transposed, as a linear
layer computes it, on 2 threads. Reads `DTYPE M K N COPIES` lines on stdin (COPIES weight
matrices are cycled so that decode-sized products read their weights from memory, not from the
cache), answers one JSON line each: {"gflops", "gbps"} (gbps: weight bytes read per second)."""
import json, statistics, sys, time
import torch
torch.set_num_threads(2)
print(json.dumps({"torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability()}), flush=True)
for line in sys.stdin:
    dt, m, k, n, copies = line.split()
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[dt]
    m, k, n, copies = int(m), int(k), int(n), int(copies)
    x = torch.randn(m, k).to(dtype)
    ws = [torch.randn(n, k).to(dtype) for _ in range(copies)]
    with torch.inference_mode():
        for w in ws:
            torch.nn.functional.linear(x, w)
        # batches of at least 0.1 s, the median of 5
        reps, t = 0, time.perf_counter()
        while time.perf_counter() - t < 0.1:
            torch.nn.functional.linear(x, ws[reps % copies]); reps += 1
        ts = []
        for _ in range(5):
            t = time.perf_counter()
            for i in range(reps):
                torch.nn.functional.linear(x, ws[i % copies])
            ts.append((time.perf_counter() - t) / reps)
    dt_s = statistics.median(ts)
    print(json.dumps({"gflops": 2 * m * k * n / dt_s / 1e9, "gbps": n * k * ws[0].element_size() / dt_s / 1e9}), flush=True)
