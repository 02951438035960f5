"""dambq: Distribution-aware Adaptive Multi-bit Quantization (CVPR 2021), as a small library.

    qmodel = dambq.convert(model, weight_bits=4, act_bits=4)   # DMBQ weights, uniform activations
    dambq.calibrate_act_clips(qmodel, images)                   # MSE-optimal ranges (signed where inputs go <0)
    alloc = dambq.BitAllocator(qmodel, weight_target=2.0, act_target=2.0, window=(0, 150))
    loss.backward(); alloc.accumulate(); optimizer.step()       # every step; alloc.end_epoch(e) each epoch
    dambq.average_bits(qmodel), dambq.bit_report(qmodel)        # size-weighted averages, per-layer table
    dambq.save_packed(qmodel, "model.dambq"); dambq.load_packed("model.dambq")  # b bits per weight, bit-plane forward
"""
from .codebook import CODEBOOKS, V2_LAPLACE_TABLE, build_codebook
from .attention import QuantMultiheadAttention
from .calibrate import calibrate_act_clips
from .convert import (DEFAULT_CODEBOOK, average_bits, conversion_report, convert, quant_layers,
                      quantized_weight_share)
from .export import load_packed, save_packed
from .layers import QuantConv1d, QuantConv2d, QuantConv3d, QuantLinear
from .lba import BitAllocator, bit_report

__all__ = ["convert", "calibrate_act_clips", "average_bits", "BitAllocator", "bit_report", "quant_layers",
           "conversion_report", "quantized_weight_share", "save_packed", "load_packed",
           "QuantConv1d", "QuantConv2d", "QuantConv3d", "QuantLinear", "QuantMultiheadAttention",
           "build_codebook", "CODEBOOKS", "DEFAULT_CODEBOOK", "V2_LAPLACE_TABLE"]
