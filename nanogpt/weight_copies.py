"""Copies of the model's matrices in the autocast dtype, cast once per optimizer step.

Under autocast every matmul casts its float32 weight to bf16, in each micro-batch's forward and again in its
backward, and autograd casts each weight's bf16 gradient back to float32 before adding it into `.grad`:
about 2 ms of elementwise kernels per micro-batch at depth 12 on an H100, 16 times per step
(docs/benchmarks.md). With copies, the training forward reads bf16 tensors cast once at the start of the
step, autograd leaves their bf16 gradients on the copies, and `accumulate` adds those into the float32
parameters' `.grad` after each backward, one kernel per matrix. The float32 parameters stay the model's:
the optimizer, checkpoints, evaluation and generation see nothing else.

The numbers are autocast's, bit for bit: the cast rounds as autocast's does, each micro-batch's gradient is
the same bf16 tensor, and it is added into the same float32 sum (tests/test_weight_copies.py).
"""

from collections.abc import Callable, Iterable

import torch
from torch import nn


class WeightCopies:
    """Copies, in `dtype`, of the weights of `model`'s nn.Linear modules whose names are not in `skip`."""

    def __init__(self, model: nn.Module, dtype: torch.dtype, *, skip: Iterable[str] = ()) -> None:
        skipped = set(skip)
        linears = [
            (name, module)
            for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and name not in skipped
        ]
        self.params = [module.weight for _, module in linears]
        self.copies = [torch.empty_like(p, dtype=dtype).requires_grad_() for p in self.params]
        self._by_param = {id(p): copy for p, copy in zip(self.params, self.copies, strict=True)}

    @property
    def grad_bytes(self) -> int:
        """The copies' gradients, alive from a backward to the next `accumulate`: what a step holds beyond
        an autocast step of the same model (whose own bf16 casts of the weights take as much as the copies
        themselves)."""
        return sum(copy.numel() * copy.element_size() for copy in self.copies)

    @torch.no_grad()
    def refresh(self) -> None:
        """Cast the parameters into the copies, and drop any gradient a backward left on them without an
        `accumulate` (one that failed half-way: the standby warm-up's out of memory): at the start of each
        step, after the optimizer has moved the parameters."""
        for param, copy in zip(self.params, self.copies, strict=True):
            copy.copy_(param)
            copy.grad = None

    @torch.no_grad()
    def accumulate(self) -> None:
        """Add the copies' gradients of the last backward into the parameters' float32 `.grad` (set where
        it is None) and clear them, so that the next backward starts them afresh rather than summing in
        bf16."""
        for param, copy in zip(self.params, self.copies, strict=True):
            grad, copy.grad = copy.grad, None
            if grad is None:
                continue
            if param.grad is None:
                param.grad = grad.to(param.dtype)
            else:
                param.grad.add_(grad)

    def forward(self, module: nn.Module) -> Callable[..., torch.Tensor]:
        """`module`'s call with the copies in place of the parameters they copy: `module` is the model, or
        anything that holds it as a submodule (torch.compile's wrapper, compile_blocks' forward); the names
        are found by identity."""
        replaced = {
            name: self._by_param[id(param)]
            for name, param in module.named_parameters(remove_duplicate=False)
            if id(param) in self._by_param
        }
        missing = len(self.params) - len({id(copy) for copy in replaced.values()})
        assert missing == 0, f"{missing} copied parameters are not parameters of {type(module).__name__}"

        def call(*args, **kwargs) -> torch.Tensor:
            return torch.func.functional_call(module, replaced, args, kwargs, strict=False, tie_weights=False)

        return call
