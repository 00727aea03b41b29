"""The step function of dynamic sparse training and its long-tailed straight-through estimator.

Liu et al., "Dynamic Sparse Training: Find Efficient Sparse Network From Scratch With Trainable Masked Layers"
(ICLR 2020): forward ``step(x) = 1 if x > 0 else 0``; backward replaces the step's zero derivative by

    g(x) = 2 - 4|x|   for |x| <= 0.4
           0.4        for 0.4 < |x| <= 1
           0          for |x| > 1

so a weight just below its threshold still receives a gradient and can come back.
"""

from __future__ import annotations

import torch


def long_tailed_derivative(x: torch.Tensor) -> torch.Tensor:
    """``g(x)`` above, element-wise."""
    magnitude = x.abs()
    return torch.where(
        magnitude <= 0.4, 2.0 - 4.0 * magnitude, torch.where(magnitude <= 1.0, torch.full_like(x, 0.4), 0.0)
    )


class LongTailedStep(torch.autograd.Function):
    """``(x > 0)`` as a float tensor, differentiated by ``long_tailed_derivative``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad_output * long_tailed_derivative(x)


def step(x: torch.Tensor) -> torch.Tensor:
    """The trainable step: 1 where ``x > 0``, else 0; gradients by the long-tailed estimator."""
    return LongTailedStep.apply(x)
