"""Shared test setup: tests default to CPU, one torch thread per pytest worker."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

# Helpers such as tests/reference.py are importable from any test folder.
sys.path.insert(0, str(Path(__file__).resolve().parent))
torch.set_num_threads(1)
