"""maas: PyTorch -> verified ONNX -> TorchServe with an ONNX Runtime handler -> Locust release gate."""
__version__ = "0.1.0"
