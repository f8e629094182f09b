"""How certified models leave: ONNX and TorchScript artifacts with the certificate embedded."""
