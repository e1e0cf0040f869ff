"""Which of ONNX Runtime's graph fusions a session does better without (imported flat by the
handler inside a .mar, and by the build's sessions so that they time and price what serves)."""
from __future__ import annotations

from typing import Any

# ONNX Runtime's CPU kernel for SkipLayerNormalization (1.31) is far slower than the Add and
# LayerNormalization it fuses: minilm INT8, one thread, batches of 8 sentences, 20.7 -> 14.0 ms a
# batch without the fusion (the fused op took 28 % of the time, Add + LayerNormalization take 6 %);
# FP32 41.7 -> 37.9 ms. On CUDA the fused kernel is the fast one, so only CPU-only sessions go without.
CPU_SLOWER_FUSIONS = ("SkipLayerNormFusion",)


def disabled_optimizers(providers: list[Any]) -> list[str]:
    """The graph fusions a session on `providers` is better off without."""
    names = [p[0] if isinstance(p, tuple) else p for p in providers]
    return list(CPU_SLOWER_FUSIONS) if names == ["CPUExecutionProvider"] else []
