"""Causal layers, each written once: masked linear, causal 1-D convolution, causal self-attention."""

from chainrule.nn.attention import CausalSelfAttentionBlock
from chainrule.nn.causal import CausalConv1d
from chainrule.nn.masked import MaskedLinear

__all__ = ["CausalConv1d", "CausalSelfAttentionBlock", "MaskedLinear"]
