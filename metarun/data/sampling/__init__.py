"""How episodes are drawn: the N-way K-shot sampler and the image task source, fixed evaluation episodes,
Meta-Dataset's variable episodes, the regression families' draws, and on-device augmentation (strokes too)."""
