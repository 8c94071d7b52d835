"""Typed stub of the compiled core (csrc/bindings/module.cpp)."""

from typing import Optional

import numpy as np

class Plan:
    def __init__(
        self,
        mode: str,
        input_size: int,
        hidden_size: int,
        num_layers: int,
        bidirectional: bool,
        dtype: str,
        T: int,
        N: int,
        training: bool,
        *,
        activation: Optional[str] = None,
        recurrent_activation: str = "sigmoid",
        reset_after: bool = True,
        zero_masked_output: bool = False,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        zoneout_outputs: float = 0.0,
        zoneout_states: float = 0.0,
        residual: bool = False,
        proj_size: int = 0,
        dropout_per_gate: bool = False,
        lengths: Optional[list[int]] = None,
        executor: str = "loop",
    ) -> None: ...
    @property
    def mode(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    @property
    def input_size(self) -> int: ...
    @property
    def hidden_size(self) -> int: ...
    @property
    def num_layers(self) -> int: ...
    @property
    def bidirectional(self) -> bool: ...
    @property
    def activation(self) -> str: ...
    @property
    def recurrent_activation(self) -> str: ...
    @property
    def reset_after(self) -> bool: ...
    @property
    def zero_masked_output(self) -> bool: ...
    @property
    def dropout(self) -> float: ...
    @property
    def recurrent_dropout(self) -> float: ...
    @property
    def zoneout_outputs(self) -> float: ...
    @property
    def zoneout_states(self) -> float: ...
    @property
    def residual(self) -> bool: ...
    @property
    def proj_size(self) -> int: ...
    @property
    def dropout_per_gate(self) -> bool: ...
    @property
    def T(self) -> int: ...
    @property
    def N(self) -> int: ...
    @property
    def training(self) -> bool: ...
    @property
    def chunk_t(self) -> int: ...
    @property
    def workspace_bytes(self) -> int: ...
    @property
    def reserve_bytes(self) -> int: ...
    @property
    def executor(self) -> str: ...
    @property
    def varlen(self) -> bool: ...
    @property
    def rows(self) -> int: ...
    @property
    def lengths(self) -> list[int]: ...
    @property
    def batch_sizes(self) -> list[int]: ...
    @property
    def num_lanes(self) -> int: ...
    @property
    def unroll_chunk(self) -> int: ...
    @property
    def isa(self) -> str: ...

def param_count(
    mode: str, input_size: int, hidden_size: int, num_layers: int, bidirectional: bool,
    proj_size: int = 0,
) -> int: ...
def param_layout(
    mode: str, input_size: int, hidden_size: int, num_layers: int, bidirectional: bool,
    proj_size: int = 0,
) -> list[tuple[int, int, bool, bool, int, int, int, bool]]: ...
def forward(
    plan: Plan,
    x: np.ndarray,
    w: np.ndarray,
    hx: Optional[np.ndarray],
    cx: Optional[np.ndarray],
    y: np.ndarray,
    hy: Optional[np.ndarray],
    cy: Optional[np.ndarray],
    workspace: np.ndarray,
    reserve: Optional[np.ndarray],
    mask: Optional[np.ndarray] = None,
    seed: int = 0,
    lengths: Optional[np.ndarray] = None,
    packed: bool = False,
    order: Optional[np.ndarray] = None,
) -> None: ...
def backward_data(
    plan: Plan,
    dy: Optional[np.ndarray],
    dhy: Optional[np.ndarray],
    dcy: Optional[np.ndarray],
    w: np.ndarray,
    hx: Optional[np.ndarray],
    cx: Optional[np.ndarray],
    dx: np.ndarray,
    dhx: Optional[np.ndarray],
    dcx: Optional[np.ndarray],
    workspace: np.ndarray,
    reserve: np.ndarray,
    mask: Optional[np.ndarray] = None,
    seed: int = 0,
    lengths: Optional[np.ndarray] = None,
    packed: bool = False,
    order: Optional[np.ndarray] = None,
) -> None: ...
def backward_weights(
    plan: Plan,
    x: np.ndarray,
    hx: Optional[np.ndarray],
    dw: np.ndarray,
    workspace: np.ndarray,
    reserve: np.ndarray,
    seed: int = 0,
    lengths: Optional[np.ndarray] = None,
    packed: bool = False,
    order: Optional[np.ndarray] = None,
) -> None: ...
def lane_count() -> int: ...
def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...
def build_info() -> dict: ...
def _activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...
