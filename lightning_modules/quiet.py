"""Known-harmless third-party start-up messages, silenced in one place (imported first by the package):
torchao logs that its CUDA / mxfp8 kernels fail to load on CPU-only machines, and torch's pytree
warns that torchao registers Enum constants the deprecated way."""

import logging

import torch  # noqa: F401  (torch configures its loggers on import: set the levels after it)

for name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(name).setLevel(logging.ERROR)
