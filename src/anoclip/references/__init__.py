"""Visual references: the scorers that turn features into scores and maps.

    scorer: the contract of a scorer with the pipeline's one scoring loop (Scorer)
    token_scorer: the CLIP token path, each image alone or a set (Dual-Image, mutual)
    patch_scorer: MuSc-style patch features of any backbone, banks of known-good images
    distances, neighbours, patches, bank, fusion: their small pure steps

May import: the base modules, data and clip.
"""
