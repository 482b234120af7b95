"""aiot_edge: the torch-free runtime of aiot-w2v2.

This package runs on Raspberry Pi and Jetson boards next to the machines. It knows nothing about
torch or training: it reads a bundle (ONNX model + bundle.json), windows audio and scores it with
onnxruntime. It must never import torch, directly or indirectly (tests/test_edge_boundary.py checks).
"""

__version__ = "0.1.0"
