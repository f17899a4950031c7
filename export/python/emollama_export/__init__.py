"""emollama exporter: Emotion-LLaMA PyTorch modules -> ONNX engines + GGUF backbone + manifest.

Every module here follows the official code (ZebangCheng/Emotion-LLaMA, see
shared/spec/emotion-llama.md); the synthetic mode builds them at tiny widths with
seeded random weights so that tests run the real engines on real files.
"""

EXPORTER_VERSION = "0.1.0"
