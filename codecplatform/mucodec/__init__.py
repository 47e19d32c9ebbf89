"""MuCodec (Xu et al. 2024, "MuCodec: Ultra Low-Bitrate Music Codec"; official code xuyaoxun/MuCodec):
MuEncoder + tokenizer, Mel-VAE, flow-matching DiT, vocoder."""
