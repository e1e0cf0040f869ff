"""Architectures no one here wrote: transformers models built from configs, seeded random weights.

This file plays the part of a user's own code (`maas package --torch hf_models:make_resnet`).
Configs are small so a test packages and serves them in seconds; nothing comes from a hub.
"""
from __future__ import annotations

import torch


def make_resnet() -> torch.nn.Module:
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(num_channels=3, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], num_labels=5)
    return ResNetForImageClassification(config).eval()


def make_vit() -> torch.nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=64, num_labels=4)
    return ViTForImageClassification(config).eval()


def make_mobilenet() -> torch.nn.Module:
    """As transformers initialises it: its logits are ~1e-26 whatever the image (a parity trap)."""
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    torch.manual_seed(0)
    config = MobileNetV2Config(num_channels=3, image_size=32, depth_multiplier=0.35, num_labels=6)
    return MobileNetV2ForImageClassification(config).eval()


def make_mobilenet_varied() -> torch.nn.Module:
    """The same architecture with weights drawn wide enough that the logits depend on the image."""
    model = make_mobilenet()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=generator) * (2.0 / p[0].numel()) ** 0.5)
            elif name.endswith("weight"):
                p.fill_(1.0)
    return model.eval()


def make_distilbert() -> torch.nn.Module:
    from transformers import DistilBertConfig, DistilBertModel

    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=500, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64)
    return DistilBertModel(config).eval()
