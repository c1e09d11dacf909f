import os
import sys
from pathlib import Path

# Two test workers share two cores: one thread each (also for the subprocesses and notebook
# kernels they start); oversubscribed torch threads run many times slower here.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

sys.path.insert(0, str(Path(__file__).parent))

from reapkit.data import pad_batches  # noqa: E402


@pytest.fixture
def batches():
    """Two domains, uneven lengths (so there is padding), ids inside the tiny vocabulary (96)."""
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 96, (n,), generator=g).tolist() for n in (12, 7, 10, 5, 9, 12)]
    return pad_batches(seqs[:3], "code", 3) + pad_batches(seqs[3:], "prose", 2)
