"""Inline inspection (issue 26): decide each part as it arrives, on top of the facade.

    store.py    OUT/state.sqlite (WAL): answered parts, the rolling memory, the fingerprint
    rule.py     the rolling set rule (decide.unlabeled over the last parts)
    line.py     Line: a micro-batch -> Detector.iter_predict -> decisions -> durable results
    batcher.py  concurrent requests -> micro-batches
    service.py  the FastAPI app of `anoclip serve` (extra `serve`)
    watch.py    `anoclip watch`: complete files of a folder -> the engine

May import: base, data, references, decide, results and the facade (never cli).
"""
