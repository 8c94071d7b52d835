"""Where the time of one fusedrnn / cuDNN call goes on the GPU: torch.profiler's kernel table for a
few cases, next to the wall time of the call (CUDA events). A GPU sum far under the wall time
means the host (launch overhead) bounds the call.

    python bench/cuda_profile.py
"""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

import fusedrnn.torch as ft
from fusedrnn.torch import _cuda as fcuda

CASES = [  # (name, H, N, T, train, algo)
    ("H512 N64 fwd step", 512, 64, 100, False, "step"),
    ("H256 N16 fwd step", 256, 16, 100, False, "step"),
    ("H256 N16 fwd persistent", 256, 16, 100, False, "persistent"),
    ("H256 N1 train persistent", 256, 1, 100, True, "persistent"),
]


def main() -> None:
    for name, H, N, T, train, algo in CASES:
        torch.manual_seed(0)
        ours = ft.LSTM(H, H).cuda()
        theirs = torch.nn.LSTM(H, H).cuda()
        theirs.load_state_dict(ours.state_dict())
        x = torch.randn(T, N, H, device="cuda")
        fcuda.ALGO = algo
        for label, m in (("fusedrnn", ours), ("cudnn", theirs)):
            def call():
                if train:
                    xi = x.detach().requires_grad_(True)
                    m(xi)[0].sum().backward()
                else:
                    with torch.no_grad():
                        m(x)
            for _ in range(3):
                call()
            torch.cuda.synchronize()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            call()
            b.record()
            b.synchronize()
            wall = a.elapsed_time(b)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                call()
                torch.cuda.synchronize()
            events = [e for e in prof.key_averages() if e.device_time_total > 0]
            gpu = sum(e.self_device_time_total for e in events) / 1000
            print(f"== {name} {label}: wall {wall:.3f} ms, GPU kernels {gpu:.3f} ms")
            for e in sorted(events, key=lambda e: -e.self_device_time_total)[:6]:
                print(f"   {e.self_device_time_total / 1000:8.3f} ms  x{e.count:<5} {e.key[:90]}")
    fcuda.ALGO = "auto"


if __name__ == "__main__":
    main()
