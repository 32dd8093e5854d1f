"""The AnoCLIP method on open_clip models (METHOD.md §2): backbone, V-V dual-path encoder,
prompts and text embeddings, augmented views, test-time adaptation, maps and image scores.

    tiles `[T, 3, S, S]` --features.encode--> Features (text cosines, CLS views, tokens)

May import: the base modules and data.
"""
