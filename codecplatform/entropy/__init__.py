"""Entropy coding of codec codes with a code language model (EnCodec section 3.3).

``range_coder``: the arithmetic (range) coder and the deterministic pdf quantization;
``coding``: ``entropy_encode`` / ``entropy_decode`` of (K, T) int64 codes with a ``CodeLM``.
"""
