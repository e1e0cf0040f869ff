"""What a model module's train() returns to the build pipeline."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class Trained:
    module: Any  # eval-mode torch.nn.Module whose forward takes the spec's inputs in order
    sample: dict[str, np.ndarray]  # held-out inputs for parity checks, keyed by input name
    metrics: dict[str, Any]  # held-out quality, recorded in the manifest
    extra_manifest: dict[str, Any] = field(default_factory=dict)  # what the handler reads besides the I/O spec
    assets: list[Path] = field(default_factory=list)  # files the handler needs inside the .mar (tokenizer.json, ...)


def fit(model: Any, batch_loss: Callable[[Any, Any], Any], n: int, *,
        name: str, epochs: int, batch_size: int, lr: float, seed: int, weight_decay: float = 0.0) -> None:
    """Adam with a cosine schedule over seeded, shuffled minibatches of n examples; logs progress.

    batch_loss(indices, generator) returns the loss of one minibatch (the generator is for
    augmentation, so a seed fixes the whole run).
    """
    import torch
    from tqdm import tqdm

    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    gen = torch.Generator().manual_seed(seed)
    # A bar on a terminal (tqdm turns itself off when stderr is not one: CI logs get the lines below).
    for epoch in tqdm(range(epochs), desc=f"{name}: training", unit="epoch", leave=False, disable=None):
        model.train()
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            opt.zero_grad()
            loss = batch_loss(idx, gen)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        if epoch % 10 == 0 or epoch == epochs - 1:
            log.info("%s: epoch %d/%d  loss %.4f", name, epoch + 1, epochs, total / n)
    model.eval()
