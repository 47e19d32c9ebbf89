"""MuCodec (seed 001): MuEncoder + tokenizer, Mel-VAE, flow-matching DiT, vocoder."""
