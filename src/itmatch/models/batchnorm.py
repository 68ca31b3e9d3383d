"""BatchNorm of a fine-tuned backbone: frozen running statistics, whatever mode the model is in."""

from __future__ import annotations

from typing import Any

import torch


def freeze_batchnorm_statistics(backbone: torch.nn.Module) -> torch.utils.hooks.RemovableHandle:
    """Keep ``backbone``'s BatchNorm layers in evaluation mode, whatever mode the model is put in.

    The normalisation then always uses the pretrained running statistics and never updates them
    (BatchNorm's affine weight and bias still train with the backbone). Fine-tuning batches are
    small, sharded across ranks or split into micro-batches, and the captions of one photo
    repeat in a batch; batch statistics from them would be noisy and would differ between a
    1-GPU and an 8-GPU run of the same recipe, while frozen statistics make every set-up compute
    the same function. A backbone whose parameters are all frozen runs entirely in evaluation
    mode (no stochastic depth either): it is a fixed feature extractor.

    Implemented as a forward pre-hook (``JointModel.train()`` is called at every step); returns
    its handle. Calling it twice on one module is harmless.
    """
    existing = getattr(backbone, "_itmatch_bn_hook", None)
    if existing is not None:
        return existing

    def hook(module: torch.nn.Module, args: Any) -> None:
        if not module.training:
            return
        if not any(p.requires_grad for p in module.parameters()):
            module.eval()
            return
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()

    handle = backbone.register_forward_pre_hook(hook)
    backbone._itmatch_bn_hook = handle
    return handle
