"""MuonAdamW: Muon for the hidden matrices, AdamW for everything else, sharded over ranks (ZeRO-2 style).

One class serves 1..N ranks; a single process is world_size == 1 and runs the same code. `step()`:

1. launches an asynchronous reduce-scatter per AdamW parameter and per Muon stack, which averages the
   gradients over the ranks and leaves each rank the shard it owns (the caller never all-reduces
   gradients and never wraps the model in DDP);
2. as each reduction completes, updates this rank's shard (the only shard it keeps optimizer state for)
   and launches an asynchronous all-gather of the updated parameters;
3. waits for the gathers and writes the gathered values back into the parameters.

Sharding. AdamW parameters are flattened and zero-padded to a multiple of world_size; rank r owns the
r-th contiguous slice. A Muon group's matrices of one shape are stacked into a (K, m, n) tensor, padded
with zero matrices to a multiple of world_size, and rank r owns whole matrices [r*K'/W, (r+1)*K'/W)
(orthogonalization needs a whole matrix). Optimizer state per rank is therefore about 1/world_size of
the total; `state_bytes()` reports it.

Gradients. `step()` consumes them: as it launches a parameter's (or a stack's) reduce-scatter it sets
`p.grad = None`, so the reduction's input (for AdamW a view of the old `p.grad`, or a zero-padded copy;
for Muon the stacked matrices) is the only full copy left, and each input is freed once its update has
read this rank's reduced shard (Muon's stack is reused as the all-gather buffer, then freed). During
`step()` a rank thus holds about one set of full gradients (plus, briefly, one stack's copy) and its
reduced shards; after `step()` it holds no gradients at all, only its 1/world_size of the optimizer
state. Between backward and `step()` each rank still holds full gradients: backward accumulates them
over the micro-batches, and reducing per micro-batch would change the arithmetic.

Param groups (dicts; the keys below and nothing else):

    key           kind    default        meaning
    params        both    (required)     the tensors
    kind          both    (required)     "muon" | "adamw"
    lr            both    (required)     learning rate; the trainer rescales it every step
    initial_lr    both    lr             set at construction; the trainer multiplies it by its schedule
    weight_decay  both    0.0            decoupled: p *= 1 - lr * weight_decay
    name          both    ""             label for messages
    betas         adamw   (0.9, 0.999)   as torch.optim.AdamW
    eps           adamw   1e-8           as torch.optim.AdamW
    momentum      muon    0.95           momentum buffer decay
    nesterov      muon    True           use the Nesterov look-ahead of the buffer
    ns_steps      muon    5              Polar Express iterations (more: closer to orthogonal)

A gradient of None counts as zero. Every rank must join every collective whether or not its parameter
was used, so skipping would deadlock when ranks disagree; the parameter still decays and its moments
still move. All ranks must build the optimizer with the same groups, in the same order.

The math (`adamw_update`, `muon_update`, `orthogonalize`) is kept apart from the code that moves
tensors between ranks (`_Collectives`); on CUDA the two update kernels run under torch.compile.
"""

import functools
import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

STATE_DICT_FORMAT = "nanogpt.optim.MuonAdamW/1"

_REQUIRED_KEYS = ("params", "kind", "lr")
_DEFAULTS: dict[str, dict[str, Any]] = {
    "adamw": {"weight_decay": 0.0, "betas": (0.9, 0.999), "eps": 1e-8},
    "muon": {"weight_decay": 0.0, "momentum": 0.95, "nesterov": True, "ns_steps": 5},
}
_OPTIONAL_KEYS = ("initial_lr", "name")

_MIN_COMPILED_NUMEL = 1024  # smaller shards run the eager kernels

# Scalar hyperparameters reach the kernels as Python floats when eager, and as 0-D CPU tensors when
# compiled: a changing Python float (the lr changes every step) would recompile a dynamic=False graph.
Scalar = float | Tensor

# -----------------------------------------------------------------------------
# Math kernels: no communication here.

# Polar Express (Amsel, Persson, Musco, Gower 2025, arXiv:2505.16932, Algorithm 1). Each triple is the
# optimal odd quintic given the ones before it, so any prefix is the best schedule of that length and
# `ns_steps` trades speed for orthogonality. The first seven are divided by a 1.01 safety factor (as in
# the paper) for bf16 round-off; the last, (15, -10, 3) / 8, is the classic Newton-Schulz quintic that
# the schedule converges to, and is repeated past the end of the list.
_POLAR_EXPRESS_RAW = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)
POLAR_EXPRESS_COEFFS = (
    *((a / 1.01, b / 1.01**3, c / 1.01**5) for a, b, c in _POLAR_EXPRESS_RAW[:-1]),
    _POLAR_EXPRESS_RAW[-1],
)


def polar_express_schedule(ns_steps: int) -> list[tuple[float, float, float]]:
    """The (a, b, c) of each of `ns_steps` iterations X <- aX + b(XX^T)X + c(XX^T)^2 X."""
    extra = max(0, ns_steps - len(POLAR_EXPRESS_COEFFS))
    return list(POLAR_EXPRESS_COEFFS[:ns_steps]) + [POLAR_EXPRESS_COEFFS[-1]] * extra


def orthogonalize(G: Tensor, ns_steps: int, dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """Approximate U V^T of each matrix G = U S V^T in the last two dims, computed in `dtype`.

    Returns `dtype`. Singular values come out near 1 (within a few percent for ns_steps=5 when the
    input's are within 1e-3 of its largest); the iteration is stable in bf16, which is why it is run there.
    """
    X = G.to(dtype)
    tall = G.size(-2) > G.size(-1)
    if tall:  # iterate on the wide orientation so the Gram matrix X X^T is the small one
        X = X.mT
    # Frobenius norm >= spectral norm, so every singular value starts in (0, 1].
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * 1.01 + 1e-7)
    for a, b, c in polar_express_schedule(ns_steps):
        A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return X.mT if tall else X


def adamw_update(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    *,
    decay: Scalar,
    one_minus_beta1: Scalar,
    beta2: Scalar,
    one_minus_beta2: Scalar,
    step_size: Scalar,
    bias_correction2_sqrt: Scalar,
    eps: Scalar,
) -> None:
    """One AdamW step in place, in fp32, in torch.optim.AdamW's order of operations.

    `decay` = 1 - lr * weight_decay and `step_size` = lr / (1 - beta1^t) are computed on the host in
    double precision, as torch.optim.AdamW does. The moments are fp32; `param` may be bf16.
    """
    p32, g32 = param.float(), grad.float()
    p32.mul_(decay)
    exp_avg.lerp_(g32, one_minus_beta1)
    # addcmul with value 1 rounds like torch's addcmul(g, g, value=1 - beta2): one fused multiply-add.
    exp_avg_sq.mul_(beta2).addcmul_(g32 * one_minus_beta2, g32)
    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    p32.sub_(exp_avg * step_size / denom)
    if param.dtype != torch.float32:
        param.copy_(p32)


def muon_update(
    params: Tensor,
    grads: Tensor,
    momentum_buffer: Tensor,
    *,
    momentum: Scalar,
    one_minus_momentum: Scalar,
    decay: Scalar,
    scaled_lr: Scalar,
    nesterov: bool,
    ns_steps: int,
    orth_dtype: torch.dtype,
) -> None:
    """One Muon step in place on a stack of same-shape matrices `params` (k, m, n).

    Momentum buffer (fp32): buf <- momentum * buf + (1 - momentum) * grad; the update is the buffer, or
    with Nesterov its look-ahead grad + momentum * (buf - grad), orthogonalized. `scaled_lr` carries the
    shape-aware factor sqrt(max(1, m/n)) that keeps the update's RMS independent of the aspect ratio.
    """
    p32, g32 = params.float(), grads.float()
    momentum_buffer.lerp_(g32, one_minus_momentum)
    update = g32.lerp(momentum_buffer, momentum) if nesterov else momentum_buffer
    ortho = orthogonalize(update, ns_steps, orth_dtype).float()
    p32.mul_(decay)
    p32.sub_(ortho * scaled_lr)
    if params.dtype != torch.float32:
        params.copy_(p32)


@functools.cache
def _compiled(kernel: Callable[..., None]) -> Callable[..., None]:
    # Compiled lazily, on first use on a CUDA device: nothing is compiled at import. The AdamW kernel is
    # elementwise over flat shards of every size, so it may go dynamic (one graph, not one per size and
    # never past dynamo's recompile limit); Muon's matmuls keep static shapes, a graph per matrix shape.
    return torch.compile(kernel, dynamic=None if kernel is adamw_update else False, fullgraph=True)


# -----------------------------------------------------------------------------
# Communication: the only code that talks to torch.distributed.


class _Pending:
    """A collective in flight; `wait()` returns its result (for a SUM reduction, divided into a mean).

    `source` is the collective's input, free for reuse once `wait()` has returned.
    """

    def __init__(self, result: Tensor, source: Tensor, work: Any = None, divide_by: int = 1):
        self.result, self.source, self._work, self._divide_by = result, source, work, divide_by

    def wait(self) -> Tensor:
        if self._work is not None:
            self._work.wait()
            self._work = None
            if self._divide_by != 1:
                self.result.div_(self._divide_by)
        return self.result


class _Collectives:
    """Reduce-scatter (mean) and all-gather along dim 0 over a process group; identities at world_size 1.

    gloo has reduce_scatter_tensor and all_gather_into_tensor (torch >= 2.3, pytorch#118911) but older
    releases reject ReduceOp.AVG, so off NCCL the mean is a SUM divided by world_size after the wait.
    """

    def __init__(self, process_group: dist.ProcessGroup | None):
        if process_group is None and dist.is_available() and dist.is_initialized():
            process_group = dist.group.WORLD
        self.group = process_group
        if process_group is None:
            self.rank, self.world_size, self._native_avg = 0, 1, True
        else:
            self.rank = dist.get_rank(process_group)
            self.world_size = dist.get_world_size(process_group)
            self._native_avg = dist.get_backend(process_group) == "nccl"

    def reduce_scatter_mean(self, full: Tensor) -> _Pending:
        """Mean over ranks of `full`'s rows, this rank's 1/world_size of them (a view of `full` at W=1)."""
        assert full.shape[0] % self.world_size == 0, (full.shape, self.world_size)
        if self.world_size == 1:
            return _Pending(full, full)
        shard = torch.empty_like(full[: full.shape[0] // self.world_size])
        op = dist.ReduceOp.AVG if self._native_avg else dist.ReduceOp.SUM
        work = dist.reduce_scatter_tensor(shard, full, op=op, group=self.group, async_op=True)
        return _Pending(shard, full, work, divide_by=1 if self._native_avg else self.world_size)

    def all_gather(self, shard: Tensor, full: Tensor) -> _Pending:
        """Every rank's `shard` into `full`; `shard` may be this rank's slice of `full` (in place)."""
        if self.world_size == 1:
            if shard.data_ptr() != full.data_ptr():
                full.copy_(shard)
            return _Pending(full, shard)
        work = dist.all_gather_into_tensor(full, shard, group=self.group, async_op=True)
        return _Pending(full, shard, work)


# -----------------------------------------------------------------------------
# The optimizer.


@dataclass(kw_only=True, slots=True, eq=False)
class _AdamWShard:
    """One AdamW parameter: its flat length padded to a multiple of world_size; this rank's moments."""

    param: Tensor
    padded_numel: int
    shard_numel: int
    exp_avg: Tensor
    exp_avg_sq: Tensor
    step: int = 0


@dataclass(kw_only=True, slots=True, eq=False)
class _MuonStack:
    """A Muon group's matrices of one shape: K of them, padded to a multiple of world_size."""

    params: list[Tensor]
    padded_count: int
    chunk: int  # matrices per rank, padding included
    owned: slice  # this rank's real matrices, indices into params
    momentum_buffer: Tensor  # (number owned, m, n) fp32


class MuonAdamW(torch.optim.Optimizer):
    """Muon for 2-D hidden matrices, AdamW for the rest; optimizer state sharded over the ranks.

    `process_group=None` uses the default group when torch.distributed is initialized, else runs as a
    single rank. `compile_kernels` compiles the update math on CUDA (never on CPU). `orth_dtype` is the
    dtype of Muon's orthogonalization (bf16; fp32 for exactness checks).
    """

    def __init__(
        self,
        param_groups: Iterable[dict[str, Any]],
        *,
        process_group: dist.ProcessGroup | None = None,
        compile_kernels: bool = True,
        orth_dtype: torch.dtype = torch.bfloat16,
    ):
        # Set before super().__init__, which calls add_param_group for every group.
        self._comm = _Collectives(process_group)
        self._compile_kernels = compile_kernels
        self._orth_dtype = orth_dtype
        self._shards: list[list[_AdamWShard | _MuonStack]] = []
        self._scalar_tensors: dict[str, Tensor] = {}
        groups = list(param_groups)
        if not groups:
            raise ValueError("MuonAdamW got no param groups")
        super().__init__(groups, defaults={})  # validates each group through add_param_group

    @property
    def rank(self) -> int:
        return self._comm.rank

    @property
    def world_size(self) -> int:
        return self._comm.world_size

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (validated as in the constructor); every rank must add the same groups in order."""
        group = _validated_group(len(self.param_groups), param_group)
        super().add_param_group(group)
        self._shards.append(self._build_shards(self.param_groups[-1]))

    def _build_shards(self, group: dict[str, Any]) -> list[_AdamWShard | _MuonStack]:
        W, r = self._comm.world_size, self._comm.rank
        if group["kind"] == "adamw":
            shards: list[_AdamWShard | _MuonStack] = []
            for p in group["params"]:
                padded = math.ceil(p.numel() / W) * W
                zeros = functools.partial(torch.zeros, padded // W, dtype=torch.float32, device=p.device)
                shards.append(
                    _AdamWShard(
                        param=p,
                        padded_numel=padded,
                        shard_numel=padded // W,
                        exp_avg=zeros(),
                        exp_avg_sq=zeros(),
                    )
                )
            return shards
        by_shape: dict[tuple, list[Tensor]] = {}  # insertion order = first appearance in the group
        for p in group["params"]:
            by_shape.setdefault((tuple(p.shape), p.dtype, p.device), []).append(p)
        stacks: list[_AdamWShard | _MuonStack] = []
        for (shape, _, device), params in by_shape.items():
            chunk = math.ceil(len(params) / W)
            owned = slice(min(r * chunk, len(params)), min((r + 1) * chunk, len(params)))
            num_owned = owned.stop - owned.start
            stacks.append(
                _MuonStack(
                    params=params,
                    padded_count=chunk * W,
                    chunk=chunk,
                    owned=owned,
                    momentum_buffer=torch.zeros(num_owned, *shape, dtype=torch.float32, device=device),
                )
            )
        return stacks

    # --- step ---

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Phase 1: every reduction in flight before any update waits on one. Each launch takes its
        # parameters' gradients out of `p.grad` (set to None), so the full gradients are held once, by the
        # reductions' inputs, never twice.
        reductions: deque[tuple[dict[str, Any], _AdamWShard | _MuonStack, _Pending]] = deque()
        for group, shards in zip(self.param_groups, self._shards, strict=True):
            for shard in shards:
                launch = self._reduce_adamw if isinstance(shard, _AdamWShard) else self._reduce_muon
                reductions.append((group, shard, launch(shard)))
        # Phase 2: update each shard as its reduction lands; its gather overlaps the next update. Popping
        # each reduction frees its input (AdamW) as soon as its update is launched.
        gathers: deque[Callable[[], None]] = deque()
        while reductions:
            group, shard, reduced = reductions.popleft()
            if isinstance(shard, _AdamWShard):
                gathers.append(self._update_adamw(group, shard, reduced))
            else:
                gathers.append(self._update_muon(group, shard, reduced))
            del reduced
        # Phase 3: write the gathered parameters back, freeing each gather buffer once it is copied.
        while gathers:
            gathers.popleft()()
        return loss

    def _reduce_adamw(self, shard: _AdamWShard) -> _Pending:
        p = shard.param
        grad = (
            p.grad.reshape(-1)
            if p.grad is not None
            else torch.zeros(p.numel(), dtype=p.dtype, device=p.device)
        )
        if shard.padded_numel != p.numel():
            grad = torch.cat([grad, grad.new_zeros(shard.padded_numel - p.numel())])
        p.grad = None  # the reduction's input holds the gradient (a view of it when unpadded) from here on
        return self._comm.reduce_scatter_mean(grad)

    def _update_adamw(
        self, group: dict[str, Any], shard: _AdamWShard, reduced: _Pending
    ) -> Callable[[], None]:
        grad = reduced.wait()
        p = shard.param
        padded = shard.padded_numel != p.numel()
        # The flat parameter (a view when no padding is needed, so the update and gather are in place).
        flat = torch.cat([p.view(-1), p.new_zeros(shard.padded_numel - p.numel())]) if padded else p.view(-1)
        start = self._comm.rank * shard.shard_numel
        mine = flat[start : start + shard.shard_numel]
        shard.step += 1
        lr, wd, (beta1, beta2), eps = group["lr"], group["weight_decay"], group["betas"], group["eps"]
        kernel, scalars = self._kernel(adamw_update, mine)
        kernel(
            mine,
            grad,
            shard.exp_avg,
            shard.exp_avg_sq,
            **scalars(
                decay=1 - lr * wd,
                one_minus_beta1=1 - beta1,
                beta2=beta2,
                one_minus_beta2=1 - beta2,
                step_size=lr / (1 - beta1**shard.step),
                bias_correction2_sqrt=(1 - beta2**shard.step) ** 0.5,
                eps=eps,
            ),
        )
        gathered = self._comm.all_gather(mine, flat)

        def finish() -> None:
            gathered.wait()
            if padded:
                p.view(-1).copy_(flat[: p.numel()])

        return finish

    def _reduce_muon(self, stack: _MuonStack) -> _Pending:
        p0 = stack.params[0]
        stacked = torch.empty(stack.padded_count, *p0.shape, dtype=p0.dtype, device=p0.device)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in stack.params]
        torch.stack(grads, out=stacked[: len(grads)])
        stacked[len(grads) :].zero_()
        del grads
        for p in stack.params:  # the stack holds them now: one full copy, not two
            p.grad = None
        return self._comm.reduce_scatter_mean(stacked)

    def _update_muon(self, group: dict[str, Any], stack: _MuonStack, reduced: _Pending) -> Callable[[], None]:
        grads = reduced.wait()
        # The stacked gradients, reduced, double as the gather output. At world_size 1 they are `grads`
        # itself, so this rank's slice is overwritten only after the update has read them.
        stacked = reduced.source
        num_owned = stack.owned.stop - stack.owned.start
        p0 = stack.params[0]
        m, n = p0.shape
        mine = stacked[self._comm.rank * stack.chunk : (self._comm.rank + 1) * stack.chunk]
        if num_owned > 0:
            owned = torch.stack(stack.params[stack.owned])
            lr, momentum = group["lr"], group["momentum"]
            kernel, scalars = self._kernel(muon_update, owned)
            kernel(
                owned,
                grads[:num_owned],
                stack.momentum_buffer,
                nesterov=group["nesterov"],
                ns_steps=group["ns_steps"],
                orth_dtype=self._orth_dtype,
                **scalars(
                    momentum=momentum,
                    one_minus_momentum=1 - momentum,
                    decay=1 - lr * group["weight_decay"],
                    scaled_lr=lr * max(1.0, m / n) ** 0.5,
                ),
            )
            mine[:num_owned].copy_(owned)
        mine[num_owned:].zero_()
        gathered = self._comm.all_gather(mine, stacked)

        def finish() -> None:
            gathered.wait()
            torch._foreach_copy_(stack.params, list(stacked[: len(stack.params)].unbind(0)))

        return finish

    def _kernel(
        self, kernel: Callable[..., None], like: Tensor
    ) -> tuple[Callable[..., None], Callable[..., dict[str, Scalar]]]:
        """The kernel to run on tensors like `like`, and how to pass it scalar hyperparameters."""
        # Tiny shards (scalars, gains) gain nothing from a fused kernel, and on torch 2.11 a compiled
        # elementwise kernel over a single element fails to launch ("CUDA driver error: invalid argument").
        if not (self._compile_kernels and like.device.type == "cuda" and like.numel() >= _MIN_COMPILED_NUMEL):
            return kernel, lambda **values: values

        def as_tensors(**values: float) -> dict[str, Scalar]:
            out: dict[str, Scalar] = {}
            for name, value in values.items():
                key = f"{kernel.__name__}.{name}"
                if key not in self._scalar_tensors:
                    self._scalar_tensors[key] = torch.zeros((), dtype=torch.float32)
                out[name] = self._scalar_tensors[key].fill_(value)
            return out

        return _compiled(kernel), as_tensors

    # --- state ---

    def state_bytes(self) -> int:
        """Bytes of optimizer state held by this rank (its shard of moments and momentum buffers)."""
        total = 0
        for shards in self._shards:
            for shard in shards:
                for t in _state_tensors(shard).values():
                    total += t.numel() * t.element_size()
        return total

    def state_dict(self) -> dict[str, Any]:
        """This rank's shard of the optimizer state (tensors are the live buffers, not copies).

        Holds only tensors, ints, strings, lists and dicts: safe for torch.load(weights_only=True).
        Hyperparameters are not included: they come from the run's config on construction.
        """
        groups = []
        for group, shards in zip(self.param_groups, self._shards, strict=True):
            entries = []
            for shard in shards:
                entry: dict[str, Any] = dict(_state_tensors(shard))
                if isinstance(shard, _AdamWShard):
                    entry["step"] = shard.step
                    entry["numel"] = shard.param.numel()
                else:
                    entry["shape"] = list(shard.params[0].shape)
                    entry["num_matrices"] = len(shard.params)
                entries.append(entry)
            groups.append({"kind": group["kind"], "num_params": len(group["params"]), "shards": entries})
        return {
            "format": STATE_DICT_FORMAT,
            "rank": self._comm.rank,
            "world_size": self._comm.world_size,
            "groups": groups,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load the shard `state_dict()` saved on this rank of a run with the same world size and groups.

        ValueError (starting "optimizer state:") for a shard that does not fit, or is malformed; then
        nothing has been loaded.
        """
        try:
            self._check_state_dict(state_dict)
        except (KeyError, IndexError, TypeError, AttributeError) as e:  # not what state_dict() writes
            raise ValueError(f"optimizer state: malformed ({type(e).__name__}: {e})") from None
        for saved, shards in zip(state_dict["groups"], self._shards, strict=True):
            for entry, shard in zip(saved["shards"], shards, strict=True):
                for name, t in _state_tensors(shard).items():
                    t.copy_(entry[name])
                if isinstance(shard, _AdamWShard):
                    shard.step = entry["step"]

    def _check_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Check everything before copying anything, so a mismatch leaves this optimizer untouched."""
        expected = {"format": STATE_DICT_FORMAT, "rank": self._comm.rank, "world_size": self._comm.world_size}
        for key, want in expected.items():
            if state_dict.get(key) != want:
                raise ValueError(
                    f"optimizer state: {key} is {state_dict.get(key)!r}, this optimizer has {want!r}"
                )
        saved_groups = state_dict["groups"]
        if len(saved_groups) != len(self.param_groups):
            have = len(self.param_groups)
            raise ValueError(
                f"optimizer state: {len(saved_groups)} param groups saved, this optimizer has {have}"
            )
        for i, (saved, group, shards) in enumerate(
            zip(saved_groups, self.param_groups, self._shards, strict=True)
        ):
            mine = {"kind": group["kind"], "num_params": len(group["params"]), "num_shards": len(shards)}
            theirs = {
                "kind": saved["kind"],
                "num_params": saved["num_params"],
                "num_shards": len(saved["shards"]),
            }
            if mine != theirs:
                raise ValueError(
                    f"optimizer state: param group {i} saved as {theirs}, this optimizer has {mine}"
                )
            for j, (entry, shard) in enumerate(zip(saved["shards"], shards, strict=True)):
                for name, t in _state_tensors(shard).items():
                    saved_tensor = entry[name]
                    if not isinstance(saved_tensor, Tensor):
                        raise ValueError(f"optimizer state: param group {i} shard {j} {name} is not a tensor")
                    if saved_tensor.shape != t.shape:
                        raise ValueError(
                            f"optimizer state: param group {i} shard {j} {name} has shape "
                            f"{tuple(saved_tensor.shape)}, this optimizer has {tuple(t.shape)}"
                        )
                if isinstance(shard, _AdamWShard) and (type(entry["step"]) is not int or entry["step"] < 0):
                    raise ValueError(f"optimizer state: param group {i} shard {j} step is {entry['step']!r}")


def _state_tensors(shard: _AdamWShard | _MuonStack) -> dict[str, Tensor]:
    if isinstance(shard, _AdamWShard):
        return {"exp_avg": shard.exp_avg, "exp_avg_sq": shard.exp_avg_sq}
    return {"momentum_buffer": shard.momentum_buffer}


def _validated_group(index: int, group: dict[str, Any]) -> dict[str, Any]:
    """A copy of `group` with defaults filled in; ValueError naming the group and key for any mistake."""
    if not isinstance(group, dict):
        raise ValueError(f"param group {index}: expected a dict, got {type(group).__name__}")
    kind = group.get("kind")
    where = f"param group {index} ({group.get('name') or kind})"
    if kind not in _DEFAULTS:
        raise ValueError(f"{where}: kind is {kind!r}, expected one of {sorted(_DEFAULTS)}")
    for key in _REQUIRED_KEYS:
        if key not in group:
            raise ValueError(f"{where}: missing required key {key!r}")
    allowed = set(_REQUIRED_KEYS) | set(_OPTIONAL_KEYS) | set(_DEFAULTS[kind])
    unknown = sorted(set(group) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} for kind {kind!r}; allowed: {sorted(allowed)}")
    out = {**_DEFAULTS[kind], **group}
    params = out["params"]
    out["params"] = [params] if isinstance(params, Tensor) else list(params)
    out["name"] = str(out.get("name", ""))

    out["lr"] = _number(where, "lr", out["lr"])
    out["initial_lr"] = _number(where, "initial_lr", out.get("initial_lr", out["lr"]))
    out["weight_decay"] = _number(where, "weight_decay", out["weight_decay"])
    if kind == "adamw":
        betas = out["betas"]
        if not (isinstance(betas, list | tuple) and len(betas) == 2):
            raise ValueError(f"{where}: betas is {betas!r}, expected two numbers in [0, 1)")
        out["betas"] = tuple(_number(where, f"betas[{i}]", b, hi=1.0) for i, b in enumerate(betas))
        out["eps"] = _number(where, "eps", out["eps"])
    else:
        out["momentum"] = _number(where, "momentum", out["momentum"], hi=1.0)
        if not isinstance(out["nesterov"], bool):
            raise ValueError(f"{where}: nesterov is {out['nesterov']!r}, expected true or false")
        steps = out["ns_steps"]
        if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1):
            raise ValueError(f"{where}: ns_steps is {steps!r}, expected an integer >= 1")
    for j, p in enumerate(out["params"]):
        if not isinstance(p, Tensor) or not p.is_floating_point():
            raise ValueError(f"{where}: param {j} is not a floating-point tensor")
        if not p.is_contiguous():
            raise ValueError(f"{where}: param {j} (shape {tuple(p.shape)}) is not contiguous")
        if kind == "muon" and p.ndim != 2:
            raise ValueError(f"{where}: param {j} has shape {tuple(p.shape)}; Muon updates 2-D matrices only")
    return out


def _number(where: str, key: str, value: Any, *, hi: float = math.inf) -> float:
    """A finite number in [0, hi) (or [0, inf) without hi), else ValueError naming the key."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (hi != math.inf and value >= hi):
        raise ValueError(f"{where}: {key} is {value!r}, expected a number in [0, {hi})")
    return float(value)
