"""The GPT that every cell of a study trains, sized by one knob: `depth`.

A modern decoder-only transformer, close to karpathy/nanochat's:
- rotary position embeddings (no learned positions) and QK-norm;
- RMSNorm without learned parameters, on the embedding, before each sub-block and before the head;
- ReLU² MLP (or GELU) with a 4× hidden layer; no biases anywhere;
- untied input embedding (`wte`) and output head (`lm_head`); optional logit soft-capping;
- separate q/k/v/proj matrices, so that Muon orthogonalises each matrix on its own.

Width follows depth: n_embd = depth × aspect_ratio rounded up to a multiple of head_dim, and
n_head = n_embd / head_dim. The model owns its accounting: `estimate_flops()` and `num_scaling_params()`
are the only source of C and N for the rest of nanostudy.

Build it on the meta device and materialise it where it will run:

    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device="cuda")
    model.init_weights()
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:
    from nanogpt.engine import KVCache

VOCAB_MULTIPLE = 64  # pad the vocabulary so that the lm_head matmul tiles well on tensor cores
ROPE_BASE = 10_000.0  # RoFormer's base: ample for the 1-4K contexts studies train at
MLP_KINDS = ("relu2", "gelu")


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclass(frozen=True, kw_only=True, slots=True)
class GPTConfig:
    depth: int
    vocab_size: int  # the tokenizer's, special tokens included
    sequence_len: int = 1024
    aspect_ratio: int = 64  # model width per layer of depth
    head_dim: int = 128
    mlp: Literal["relu2", "gelu"] = "relu2"
    logit_softcap: float | None = 15.0  # logits = cap * tanh(logits / cap); None turns it off

    def __post_init__(self) -> None:
        for key in ("depth", "vocab_size", "sequence_len", "aspect_ratio", "head_dim"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{key} must be a positive integer, got {value!r}")
        if self.head_dim % 2 != 0:
            raise ValueError(
                f"GPTConfig.head_dim must be even (rotary rotates channel pairs), got {self.head_dim}"
            )
        if self.mlp not in MLP_KINDS:
            raise ValueError(f"GPTConfig.mlp must be one of {MLP_KINDS}, got {self.mlp!r}")
        cap = self.logit_softcap
        if cap is not None and (
            not isinstance(cap, int | float) or isinstance(cap, bool) or not math.isfinite(cap) or cap <= 0
        ):
            raise ValueError(f"GPTConfig.logit_softcap must be a positive number or None, got {cap!r}")

    @property
    def n_layer(self) -> int:
        return self.depth

    @property
    def n_embd(self) -> int:
        return _round_up(self.depth * self.aspect_ratio, self.head_dim)

    @property
    def n_head(self) -> int:
        return self.n_embd // self.head_dim

    @property
    def padded_vocab_size(self) -> int:
        return _round_up(self.vocab_size, VOCAB_MULTIPLE)


FP8_INPUT = torch.float8_e4m3fn  # activations and weights: more mantissa (3 bits), range ±448
FP8_GRAD = torch.float8_e5m2  # gradients: more range (±57344), 2 bits of mantissa
FP8_MIN_AMAX = 1e-12  # an all-zero tensor (every target of a micro-batch masked) gets a normal scale


def to_fp8(t: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(t in the float8 `dtype`, its float32 scale): t ≈ fp8 × scale, one scale for the whole tensor, chosen
    so that its largest magnitude lands on the format's largest finite value. The clamp is a guard: e4m3fn
    has no infinity, so a value pushed past the top by rounding in the division would become NaN.

    The scale stays a normal float32 even for an all-zero t (FP8_MIN_AMAX): a subnormal one may be flushed
    to zero on a GPU, and 0/0 would be NaN. The division keeps t's dtype (bf16 stays bf16, computed in
    float32): one temporary the size of t, which matters eagerly for the logits' gradient."""
    limit = torch.finfo(dtype).max
    amax = t.detach().abs().amax().float()
    scale = amax.clamp(min=FP8_MIN_AMAX) / limit
    return (t / scale).clamp_(-limit, limit).to(dtype), scale


class FP8Linear(torch.autograd.Function):
    """y = x @ weightᵀ with the three matmuls of the forward and backward in FP8 on tensor cores
    (`torch._scaled_mm`): x and the weight in e4m3, the output's gradient in e5m2, each with its own
    per-tensor scale from its current largest magnitude; products accumulate in float32. y and x's
    gradient come out in x's dtype, the weight's gradient in float32. The shapes must pass `fp8_fits`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        x8, x_scale = to_fp8(x.flatten(0, -2), FP8_INPUT)
        w8, w_scale = to_fp8(weight, FP8_INPUT)
        ctx.save_for_backward(x8, x_scale, w8, w_scale)
        ctx.x_dtype, ctx.x_shape = x.dtype, x.shape
        # _scaled_mm takes its first operand row-major and its second column-major: w8ᵀ as a view is.
        y = torch._scaled_mm(x8, w8.t(), scale_a=x_scale, scale_b=w_scale, out_dtype=x.dtype)
        return y.view(*x.shape[:-1], weight.size(0))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x8, x_scale, w8, w_scale = ctx.saved_tensors
        g8, g_scale = to_fp8(grad.contiguous().flatten(0, -2), FP8_GRAD)  # row-major, as _scaled_mm wants
        # grad_x = g @ w: w (out, in) is needed column-major, a small copy.
        grad_x = torch._scaled_mm(
            g8, w8.t().contiguous().t(), scale_a=g_scale, scale_b=w_scale, out_dtype=ctx.x_dtype
        )
        # grad_w = (xᵀ @ g)ᵀ: xᵀ row-major is a small copy; g column-major is g's one transposed copy.
        grad_w = torch._scaled_mm(
            x8.t().contiguous(), g8.t().contiguous().t(), scale_a=x_scale, scale_b=g_scale,
            out_dtype=torch.float32,
        ).t()  # fmt: skip
        return grad_x.view(ctx.x_shape), grad_w


def fp8_fits(rows: int, in_features: int, out_features: int) -> bool:
    """Whether the FP8 heads (FP8Linear, nanogpt.fused_loss.FusedFP8HeadLoss) take a matmul of `rows` inputs
    (all of x's leading dimensions together) by an (out_features, in_features) weight: `torch._scaled_mm`
    wants every dimension a multiple of 16."""
    return rows % 16 == 0 and in_features % 16 == 0 and out_features % 16 == 0


def norm(x: torch.Tensor) -> torch.Tensor:
    """RMSNorm over the last dimension, without learned parameters."""
    return F.rms_norm(x, (x.size(-1),))


def apply_rotary_emb(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + hs/2) of x (B, T, nh, hs) by the angles whose cos/sin are (1, T, 1, hs/2).

    cos/sin are float32, so the rotation is computed in float32 (fused into one kernel under compile)
    and rounded once, back to x's dtype.
    """
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    y1 = x1 * cos + x2 * sin
    y2 = x2 * cos - x1 * sin
    return torch.cat([y1, y2], dim=-1).to(x.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        n_embd = config.n_embd
        self.c_q = nn.Linear(n_embd, n_embd, bias=False)
        self.c_k = nn.Linear(n_embd, n_embd, bias=False)
        self.c_v = nn.Linear(n_embd, n_embd, bias=False)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos_sin: tuple[torch.Tensor, torch.Tensor],
        kv_cache: KVCache | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, C = x.size()  # batch size, sequence length, embedding dimensionality (n_embd)
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)  # (B, T, nh, hs)
        k = self.c_k(x).view(B, T, self.n_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_head, self.head_dim)
        # QK-norm bounds the attention logits (no softmax saturation early in training); the rotation
        # preserves the norm of each channel pair, so normalising before or after it is the same.
        q, k = norm(q), norm(k)
        cos, sin = cos_sin
        q, k = apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, nh, T, hs)
        if kv_cache is None:
            # Training and full-sequence evaluation: FlashAttention's causal kernel on the GPU.
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            # Incremental decoding: this chunk's queries attend to the cached prefix and to themselves.
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, nh, max_len, hs), unwritten ones masked
            y = F.scaled_dot_product_attention(q.to(k.dtype), k, v, attn_mask=attn_mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.kind = config.mlp
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)
        # While gradients are being taken, ReLU² inside the matmuls' Triton kernels: a training setting
        # (RunConfig.fused_mlp) that the trainer turns on by setting nanogpt.fused_mlp.relu2_mlp here.
        self.fused: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None and self.kind == "relu2" and torch.is_grad_enabled():
            return self.fused(x, self.c_fc.weight, self.c_proj.weight)
        x = self.c_fc(x)
        # ReLU² (So et al. 2021, "Primer") trains faster than GELU at equal FLOPs in nanochat and
        # modded-nanogpt; GELU (GPT-2's tanh form) stays for comparison.
        x = F.relu(x).square() if self.kind == "relu2" else F.gelu(x, approximate="tanh")
        return self.c_proj(x)


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        cos_sin: tuple[torch.Tensor, torch.Tensor],
        kv_cache: KVCache | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(norm(x), cos_sin, kv_cache, attn_mask)
        x = x + self.mlp(norm(x))
        return x


def run_block(block: Block, *args) -> torch.Tensor:
    """One block's forward: what `GPT.trunk` calls for each block, and what compile_blocks compiles once."""
    return block(*args)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
                h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        # The lm_head's matmuls in FP8 while gradients are being taken (training steps): a training setting
        # (RunConfig.fp8_head) that the trainer turns on, not part of the model's shape. Evaluation and
        # generation, under no_grad, always multiply the weights as they are.
        self.fp8_head = False
        # The training loss and its gradient in one Triton kernel (nanogpt.fused_loss) while gradients are
        # being taken, on CUDA: a training setting (RunConfig.fused_loss) too; with fp8_head, its FP8 head.
        self.fused_loss = False
        # Not saved in checkpoints (persistent=False): they are a function of the config, recomputed by
        # init_weights() after to_empty(), which leaves buffers uninitialised like the parameters.
        cos, sin = self._rotary_tables(self.transformer.wte.weight.device)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _rotary_tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin of the rotary angles for positions 0..sequence_len-1, float32, (1, T, 1, hs/2)."""
        head_dim = self.config.head_dim
        channels = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device)
        inv_freq = 1.0 / ROPE_BASE ** (channels / head_dim)
        positions = torch.arange(self.config.sequence_len, dtype=torch.float32, device=device)
        angles = torch.outer(positions, inv_freq)  # (T, hs/2)
        return angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise every parameter (and the rotary buffers) in place. The whole scheme, at a glance:

        | parameter                    | init                                | why                         |
        |------------------------------|-------------------------------------|-----------------------------|
        | transformer.wte              | normal, std 1                       | RMS-normed after the lookup |
        | attn.c_q, attn.c_k, attn.c_v | uniform ±√(3/n_embd), std 1/√n_embd | unit-scale outputs          |
        | mlp.c_fc                     | uniform ±√(3/n_embd), std 1/√n_embd | same; no outliers           |
        | attn.c_proj, mlp.c_proj      | zeros                               | blocks start as identity    |
        | lm_head                      | normal, std 0.001                   | uniform output, loss ≈ ln V |
        | cos, sin (buffers)           | rotary tables, base 10000           | a function of the config    |

        Every block input is RMS-normed, so c_q/c_k/c_v/c_fc see unit-scale inputs for any width. Zero
        output projections (modded-nanogpt, nanochat) keep the residual stream at the embedding at step 0;
        their gradients are non-zero, so they move on the first step and open the path for the rest.
        """
        nn.init.normal_(self.transformer.wte.weight, mean=0.0, std=1.0)
        nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.001)
        bound = math.sqrt(3.0 / self.config.n_embd)  # U(-a, a) has std a/√3
        for block in self.transformer.h:
            for linear in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(linear.weight, -bound, bound)
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
        cos, sin = self._rotary_tables(self.cos.device)
        self.cos.copy_(cos)
        self.sin.copy_(sin)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by the optimizer that suits them: "matrix" (every 2-D block matrix, for Muon),
        "embedding" (wte), "unembedding" (lm_head), "scalar" (vectors and scalars; none in this model)."""
        groups: dict[str, list[nn.Parameter]] = {
            "matrix": [p for p in self.transformer.h.parameters() if p.ndim == 2],
            "embedding": [self.transformer.wte.weight],
            "unembedding": [self.lm_head.weight],
            "scalar": [p for p in self.transformer.h.parameters() if p.ndim < 2],
        }
        num_grouped = sum(len(g) for g in groups.values())
        assert num_grouped == len(list(self.parameters())), "a parameter is in no group"
        return groups

    def num_scaling_params(self) -> int:
        """N for scaling laws: the parameters that take part in matmuls, i.e. every block matrix plus lm_head.

        The input embedding is left out: a lookup costs no FLOPs per token, so counting it would break
        C ≈ 6·N·D (Kaplan et al. 2020 exclude embeddings for the same reason). lm_head counts at its padded
        size, which is what the matmul multiplies. This is the N that `estimate_flops()` is built on.
        """
        block_matrices = sum(p.numel() for p in self.param_groups()["matrix"])
        return block_matrices + self.lm_head.weight.numel()

    def estimate_flops(self) -> int:
        """Training FLOPs per token (forward + backward): 6·N + 12·n_layer·n_embd·sequence_len.

        - 6·N, N = num_scaling_params(): a matmul with an (n, m) weight costs 2·n·m FLOPs per token forward
          (multiply and add) and twice that backward (gradients of the input and of the weight).
        - Attention scores and mixing: per layer and token, QKᵀ dots the query with T keys of n_embd
          channels (all heads together) = 2·T·n_embd FLOPs, and AV the same, so 4·T·n_embd forward and
          12·T·n_embd with the backward. Counted over all T keys as in PaLM (Chowdhery et al. 2022,
          appendix B) and nanochat, although the causal mask skips half of them, so MFU compares with
          published numbers. Halving it for the mask would take 6·n_layer·n_embd·sequence_len off (6.6% of
          the total at depth 12, sequence 1024).
        Norms, rotary, activations, softmax and the loss are elementwise and left out. This is nanoGPT's
        `estimate_mfu` formula too (benchmarks/reference_gpt2.py), except that nanoGPT's N also counts biases
        and LayerNorm weights. FLOPs count the same whatever precision runs them: under `fp8_head` the
        lm_head's share (27% at depth 12) runs on FP8 tensor cores, and an MFU against the bf16 peak is then
        not a utilisation of bf16 hardware.
        """
        attention_flops = 12 * self.config.n_layer * self.config.n_embd * self.config.sequence_len
        return 6 * self.num_scaling_params() + attention_flops

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        kv_cache: KVCache | None = None,
        reduction: Literal["mean", "sum", "none"] = "mean",
    ) -> torch.Tensor:
        """idx (B, T) token ids → float32 logits (B, T, padded_vocab_size), or the loss given targets.

        Logits of the padding columns (ids ≥ vocab_size) are -inf: they are not tokens. With targets
        (B, T), returns the cross-entropy over the real vocabulary in float32, positions whose target is
        -1 ignored; reduction "none" gives (B, T) with zeros at ignored positions. With kv_cache (see
        nanogpt/engine.py), idx continues the cached sequences at position kv_cache.pos.
        """
        return self.head(self.trunk(idx, kv_cache=kv_cache), targets, reduction=reduction)

    def trunk(
        self, idx: torch.Tensor, *, kv_cache: KVCache | None = None, run_block: Callable = run_block
    ) -> torch.Tensor:
        """idx (B, T) token ids → the final RMS-normed hidden states (B, T, n_embd), what `head` reads.
        `run_block(block, x, cos_sin, kv_cache, attn_mask)` runs each block (compile_blocks compiles it)."""
        T = idx.size(1)
        if kv_cache is None:
            if self.cos.size(1) < T:
                raise ValueError(f"sequence of {T} tokens is longer than sequence_len {self.cos.size(1)}")
            cos_sin = self.cos[:, :T], self.sin[:, :T]
            attn_mask = None
        else:
            pos = kv_cache.pos
            if pos + T > self.cos.size(1):
                raise ValueError(f"position {pos + T} is beyond sequence_len {self.cos.size(1)}")
            positions = kv_cache.positions(T)  # a slice, or a tensor of positions (StaticKVCache)
            cos_sin = self.cos[:, positions], self.sin[:, positions]
            attn_mask = kv_cache.attn_mask(T)  # (B, 1, T, max_len), once for all layers

        x = norm(self.transformer.wte(idx))  # (B, T, n_embd)
        device_type = idx.device.type
        if torch.is_autocast_enabled(device_type):
            # Carry the residual stream in the autocast dtype (bf16), as nanochat and modded-nanogpt do:
            # it halves the memory traffic of every norm and residual add (+5% tokens/s at depth 12 on an
            # H100). Parameters stay float32.
            x = x.to(torch.get_autocast_dtype(device_type))
        for block in self.transformer.h:
            x = run_block(block, x, cos_sin, kv_cache, attn_mask)
        if kv_cache is not None:
            kv_cache.advance(T)
        return norm(x)

    def head(
        self,
        x: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        reduction: Literal["mean", "sum", "none"] = "mean",
    ) -> torch.Tensor:
        """Hidden states (B, T, n_embd) → float32 logits, or the loss given targets (as `forward` says)."""
        B, T = x.shape[:2]
        weight = self.lm_head.weight
        fp8 = self.fp8_head and torch.is_grad_enabled() and fp8_fits(B * T, weight.size(1), weight.size(0))
        if targets is not None and self.fused_loss and torch.is_grad_enabled():
            return _fused_head_loss(self, x, targets, reduction, fp8)
        if fp8:
            logits = FP8Linear.apply(x, weight)  # (B, T, padded_vocab), in x's dtype (the autocast one)
        else:
            logits = self.lm_head(x)  # (B, T, padded_vocab), in the autocast dtype
        # Float32 from here: a bf16 log-softmax over ~50K classes is too coarse for the loss. The padding
        # columns are masked rather than sliced off: rows stay 64-aligned, so the compiled loss kernels
        # vectorise (slicing to vocab_size cost 7% of tokens/s at depth 12 on an H100).
        logits = self._softcap(logits.float())
        if self.config.padded_vocab_size != self.config.vocab_size:
            is_token = torch.arange(logits.size(-1), device=logits.device) < self.config.vocab_size
            logits = logits.masked_fill(~is_token, float("-inf"))
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1, reduction=reduction)
        return loss.view(B, T) if reduction == "none" else loss

    def _softcap(self, logits: torch.Tensor) -> torch.Tensor:
        # Gemma 2's tanh soft-capping: smooth, keeps logits in (-cap, cap) so none can run away.
        cap = self.config.logit_softcap
        return logits if cap is None else cap * torch.tanh(logits / cap)


@torch.compiler.disable
def _fused_head_loss(
    model: GPT, x: torch.Tensor, targets: torch.Tensor, reduction: str, fp8: bool
) -> torch.Tensor:
    """`GPT.head`'s loss by nanogpt.fused_loss (imported here, on first use: nanogpt runs without triton
    where the fused loss is off). Eager, behind a graph break when the model is compiled: the lm_head's
    cuBLAS matmuls (in FP8 with `fp8`: FusedFP8HeadLoss) and the kernel, as measured (docs/benchmarks.md)."""
    from nanogpt.fused_loss import FusedFP8HeadLoss, FusedHeadLoss, head_loss

    cap, vocab_size = model.config.logit_softcap, model.config.vocab_size
    function = FusedFP8HeadLoss if fp8 else FusedHeadLoss
    return head_loss(
        x, model.lm_head.weight, targets, cap=cap, vocab_size=vocab_size, reduction=reduction,
        function=function,
    )  # fmt: skip


def compile_blocks(model: GPT) -> nn.Module:
    """The model's forward for training and evaluation (`(idx, targets, *, reduction)`, as `GPT.forward`
    without a KV cache) under *regional* torch.compile: one graph for a block, which every block runs (the
    blocks share their code and shapes, and a block's weights are inputs of the graph, not constants), and
    one for the head. Compilation then takes about as long at any depth, a fraction of compiling the whole
    model (docs/training.md gives the numbers); the embedding's lookup and norm stay eager. The model itself
    is left as it is (generation and evaluation elsewhere run it eagerly). A module holding the model, so
    that torch.func.functional_call can run it with other tensors for its parameters."""
    return _BlocksCompiled(model)


class _BlocksCompiled(nn.Module):
    def __init__(self, model: GPT):
        super().__init__()
        self.model = model
        self.block = torch.compile(run_block, dynamic=False)
        self.head = torch.compile(model.head, dynamic=False)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        reduction: Literal["mean", "sum", "none"] = "mean",
    ) -> torch.Tensor:
        return self.head(self.model.trunk(idx, run_block=self.block), targets, reduction=reduction)
