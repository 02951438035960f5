"""dambq: Distribution-aware Adaptive Multi-bit Quantization (CVPR 2021), as a small library.

    qmodel = dambq.convert(model, weight_bits=4, act_bits=4)   # DMBQ weights, uniform activations
    dambq.average_bits(qmodel)                                  # size-weighted (weights, activations)
"""
from .codebook import CODEBOOKS, V2_LAPLACE_TABLE, build_codebook
from .convert import DEFAULT_CODEBOOK, average_bits, convert, quant_layers
from .layers import QuantConv2d, QuantLinear

__all__ = ["convert", "average_bits", "quant_layers", "QuantConv2d", "QuantLinear",
           "build_codebook", "CODEBOOKS", "DEFAULT_CODEBOOK", "V2_LAPLACE_TABLE"]
