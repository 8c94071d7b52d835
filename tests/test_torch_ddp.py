"""fusedrnn.torch under DistributedDataParallel: two processes on the gloo backend, each with half
of a batch, give the gradients of one process on the whole batch (DDP averages the per-process
gradients of a mean loss over equal halves, which is the whole batch's mean-loss gradient)."""

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fusedrnn.torch as ft

C, H, T, N = 3, 5, 6, 4  # N: the whole batch, split in two


def _model():
    torch.manual_seed(0)  # the same initialisation in every process
    return ft.LSTM(C, H, num_layers=2, bidirectional=True).double()


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(T, N, C, generator=g, dtype=torch.float64), \
        torch.randn(T, N, 2 * H, generator=g, dtype=torch.float64)


def _loss(model, x, target):
    y, (h, _) = model(x)
    return ((y - target) ** 2).mean() + h.pow(2).mean()


def _worker(rank, world, port, out_dir):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = torch.nn.parallel.DistributedDataParallel(_model())
        x, target = _data()
        half = slice(rank * N // world, (rank + 1) * N // world)
        _loss(model, x[:, half], target[:, half]).backward()
        grads = {n: p.grad.numpy() for n, p in model.module.named_parameters()}
        np.savez(os.path.join(out_dir, f"rank{rank}.npz"), **grads)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with gloo not available")
def test_ddp_gradients_equal_single_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    model = _model()
    x, target = _data()
    _loss(model, x, target).backward()
    for rank in range(2):
        got = np.load(tmp_path / f"rank{rank}.npz")
        assert set(got.files) == {n for n, _ in model.named_parameters()}
        for name, p in model.named_parameters():
            np.testing.assert_allclose(got[name], p.grad.numpy(), rtol=1e-10, atol=1e-14,
                                       err_msg=f"rank {rank} {name}")
