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


def make_wav2vec2() -> torch.nn.Module:
    """Speech: raw 16 kHz samples -> per-frame character logits (CTC), as an ASR model serves."""
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    torch.manual_seed(0)
    config = Wav2Vec2Config(vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, conv_dim=(16, 16, 16), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3),
                            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, do_stable_layer_norm=True,
                            feat_extract_norm="layer")
    return Wav2Vec2ForCTC(config).eval()


def make_segformer() -> torch.nn.Module:
    """Segmentation: an image -> per-pixel class logits at a quarter of its size."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(0)
    config = SegformerConfig(num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
                             patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2],
                             decoder_hidden_size=32, num_labels=5)
    return SegformerForSemanticSegmentation(config).eval()


def make_t5_encoder() -> torch.nn.Module:
    """The encoder of an encoder-decoder model (T5): token ids -> hidden states."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    config = T5Config(vocab_size=500, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                      relative_attention_num_buckets=8, relative_attention_max_distance=32)
    return T5EncoderModel(config).eval()
