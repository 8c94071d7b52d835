"""fusedrnn.torch: drop-in replacements for torch.nn.LSTM / GRU / RNN and their cells, on the fused
core (CPU, and CUDA tensors where fusedrnn was built with its CUDA backend), trainable with autograd
(and DistributedDataParallel).

Replace ``torch.nn.LSTM`` with ``fusedrnn.torch.LSTM`` and change nothing else: same constructor
arguments, parameter names and shapes (state dicts load both ways), initialisation, forward
arguments and results, PackedSequence and unbatched input. Differences:

- float32 or float64 only; LSTM ``proj_size > 0`` runs in the fused core on the CPU. On CUDA
  tensors (see fusedrnn/torch/_cuda.py): work runs on the current stream; float32 GEMMs use TF32
  when ``torch.backends.cudnn.allow_tf32`` is True, as torch.nn's cuDNN call does; inter-layer
  dropout masks are drawn on the CPU, then moved; ``proj_size > 0`` runs there too.
- Dropout between layers draws its masks from the module's own generator (the ``seed`` attribute;
  default ``torch.initial_seed()``), not from torch's global random stream.
- Threads: fusedrnn's GEMMs use ``torch.get_num_threads()`` threads by default, so
  ``torch.set_num_threads`` is the one knob; ``fusedrnn.torch.set_num_threads(n)`` pins another
  count (``None`` follows torch again). Both run on the same OpenMP team, so they do not contend
  for the cores (measured in ``_threads.py`` and docs/architecture.md).
- Bad arguments raise ValueError (shapes, sizes) or TypeError (types, dtypes) naming the argument;
  torch.nn raises RuntimeError for some of these.
"""

from ._threads import get_num_threads, set_num_threads
from .modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

__all__ = ["GRU", "GRUCell", "LSTM", "LSTMCell", "RNN", "RNNCell", "get_num_threads",
           "set_num_threads"]
