"""Evaluation metrics as torchmetrics ``Metric``s with summed states, so DDP reduces them correctly.

``reconstruction``: MelDistance, STFTDistance (DAC definitions), SISDR.
``perceptual``: ViSQOL (audio mode 48 kHz / speech mode 16 kHz), PESQ (wide-band), STOI.
``codebook``: CodebookUsage and ``codebook_statistics`` (usage, entropy, perplexity, dead codes, efficiency).
"""
