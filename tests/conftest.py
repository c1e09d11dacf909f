import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from reapkit.data import pad_batches  # noqa: E402


@pytest.fixture
def batches():
    """Two domains, uneven lengths (so there is padding), ids inside the tiny vocabulary (96)."""
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 96, (n,), generator=g).tolist() for n in (12, 7, 10, 5, 9, 12)]
    return pad_batches(seqs[:3], "code", 3) + pad_batches(seqs[3:], "prose", 2)
