"""Training commands: the lung U-Net (``train-lungs``) and DeCoVNet (``train-classifier``).

Both are reproducible from a seed (every random draw comes from a generator seeded with the
seed and the step or epoch, so a resumed run draws exactly what an uninterrupted one would),
save a checkpoint as they go and resume from it, and write their weights with a manifest entry
(:mod:`inference.weights`).
"""
