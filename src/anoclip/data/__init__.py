"""Inputs: listing, decoding and preprocessing images, batches, test sets.

    paths | PIL | arrays --listing/images--> RGB --preprocess--> tiles `[T, 3, S, S]`
        --loading--> batches of Sample;  datasets: MVTec AD / VisA / folders with masks;
    tensor_files: checkpoints and banks read without running code from them

May import: the base modules (errors, settings, records, threshold, extras). standalone.py
imports nothing of anoclip (it is copied beside an exported file).
"""
