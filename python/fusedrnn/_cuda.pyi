# Typed stub of fusedrnn._cuda, the CUDA backend's extension (built when nvcc and cuBLAS are found).
# Device data cross as integer addresses; fusedrnn/torch/_cuda.py checks the tensors first.
from typing import Optional, Sequence

def available() -> tuple[bool, str]: ...
def device_count() -> int: ...

class Plan:
    def __init__(
        self,
        mode: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bidirectional: bool = False,
        dtype: str = "float32",
        T: int = 1,
        N: int = 1,
        training: bool = False,
        lengths: Optional[Sequence[int]] = None,
        activation: Optional[str] = None,
        recurrent_activation: str = "sigmoid",
        reset_after: bool = True,
        device: int = 0,
        algo: str = "auto",
        tf32: bool = False,
        proj_size: int = 0,
    ) -> None: ...
    T: int
    N: int
    training: bool
    device: int
    tf32: bool
    rows: int
    lengths: list[int]
    batch_sizes: list[int]
    workspace_bytes: int
    reserve_bytes: int
    algo: str
    dtype: str
    mode: str
    persistent_blocks: int
    persistent_backward: bool

def forward(plan: Plan, x: int, w: int, hx: int, cx: int, y: int, hy: int, cy: int,
            workspace: int, reserve: int, stream: int) -> None: ...
def backward_data(plan: Plan, dy: int, dhy: int, dcy: int, w: int, dx: int, dhx: int, dcx: int,
                  workspace: int, reserve: int, stream: int) -> None: ...
def backward_weights(plan: Plan, x: int, dw: int, workspace: int, reserve: int,
                     stream: int) -> None: ...
