"""`anoclip serve` and `anoclip watch`: decide parts as they arrive (anoclip.inline).

    validate (Plan, the line's setup, --host / --token) -> load the model stack -> bank
    -> fixed threshold (--threshold, or --mode anoclip with --normal) or the rolling rule
    -> Line (OUT/state.sqlite) -> the HTTP service (uvicorn) | the folder watcher
    -> on exit: OUT/scores.csv, threshold.json and report.html exported from the store

Modes: the default (mutual) scores each part against the rolling memory of the last
--memory ok parts and the --normal images as a bank; --mode dual takes one reference from
the memory; --mode anoclip scores each part against the bank alone, decided by the
threshold calibrated on the --normal images.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from anoclip.cli.arguments import (
    add_decision_args,
    add_mode_args,
    add_model_args,
    add_visual_args,
    check_object,
)
from anoclip.cli.plan import BankPlan, Plan, model_identity
from anoclip.cli.verdicts import calibrate_on_normals, plan_decisions, threshold_id
from anoclip.data.listing import expand_inputs
from anoclip.errors import UsageError
from anoclip.extras import check_installed
from anoclip.settings import fingerprint

MEMORY = 16  # ok parts the rolling memory holds (benchmarks/inline.py)
LOOPBACK = ("127.0.0.1", "localhost", "::1")
EXPORT_EVERY = 10.0  # seconds between a watch folder's exports (and once at the end)


def add_line_args(p: argparse.ArgumentParser) -> None:
    """What `serve` and `watch` share: the object, the state folder, the models, the line."""
    p.add_argument("--object", required=True, help="object name, e.g. transistor")
    p.add_argument("--out", required=True, help="the state and result folder (resumed)")
    add_model_args(p)
    add_mode_args(p)
    add_decision_args(p)
    from anoclip.inline.rule import WARMUP, WINDOW

    p.add_argument("--memory", type=int, default=MEMORY, help=f"ok parts remembered ({MEMORY})")
    p.add_argument("--warmup", type=int, default=WARMUP,
                   help=f"parts pending before the first decision ({WARMUP})")  # fmt: skip
    p.add_argument("--window", type=int, default=WINDOW,
                   help=f"parts the rolling rule looks back on ({WINDOW})")  # fmt: skip
    p.add_argument("--max-map-side", type=int, default=512, help="longest side of saved maps")
    add_visual_args(p)


def add_serve_commands(sub: Any) -> None:
    srv = sub.add_parser("serve", help="an HTTP service that decides each part as it arrives")
    add_line_args(srv)
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--token", default=None, help="bearer token every request must carry")
    srv.add_argument("--token-file", default=None, help="a file holding the bearer token")
    srv.add_argument("--max-bytes", type=int, default=32 * 2**20, help="largest body (32 MiB)")
    srv.add_argument("--max-pixels", type=int, default=64 * 10**6, help="largest image (64 MP)")
    srv.add_argument("--batch-wait", type=float, default=0.02, help="seconds a batch fills")
    srv.set_defaults(func=run_serve, tta=None, train_bank=False)
    watch = sub.add_parser("watch", help="decide each image a camera writes into a folder")
    watch.add_argument("folder", metavar="DIR", help="the folder to watch")
    add_line_args(watch)
    watch.add_argument("--poll", action="store_true", help="poll instead of inotify")
    watch.add_argument("--settle", type=float, default=0.5, help="seconds a file stays unchanged")
    watch.set_defaults(func=run_watch, tta=None, train_bank=False)


def line_token(args: argparse.Namespace) -> str | None:
    """The bearer token; refused when binding beyond loopback without one."""
    token = args.token
    if args.token_file:
        path = Path(args.token_file)
        if not path.is_file():
            raise UsageError(f"--token-file {path}: no such file")
        token = path.read_text().strip()
    if args.host not in LOOPBACK and not token:
        raise UsageError(f"--host {args.host} reaches beyond this machine: pass --token or "
                         "--token-file (every request must then carry it)")  # fmt: skip
    return token or None


class LinePlan:
    """What `serve` / `watch` will run, validated before the stack loads."""

    def __init__(self, args: argparse.Namespace) -> None:
        from anoclip.inline.line import LineSetup

        check_object(args.object)
        check_installed("fastapi" if args.command == "serve" else "watchdog", "serve",
                        f"anoclip {args.command}")  # fmt: skip
        args.mode = args.mode or "mutual"
        self.plan = Plan(args)
        memory = 0 if args.mode == "anoclip" else args.memory
        if args.mode != "anoclip":
            if memory < 1 or args.warmup < 3 or args.window < 3:
                raise UsageError("--memory must be >= 1, --warmup and --window >= 3")
            if args.normal and self.plan.bank.used:
                raise UsageError("--normal is the bank every part meets here: pass it, or "
                                 "--bank / --bank-images, not both")  # fmt: skip
            if args.normal:  # the known-good images are the bank every part meets
                self.plan.bank = BankPlan(expand_inputs(args.normal))
        refs = 1 if args.mode == "dual" else (self.plan.refs or "all")
        self.setup = LineSetup(args.object, memory, refs, args.warmup, args.window,
                               args.max_map_side or None, self.plan.tta)  # fmt: skip
        model, pretrained = model_identity(args, self.plan.settings)
        self.fingerprint = fingerprint(
            self.plan.settings, model=model, pretrained=pretrained, seed=self.plan.seed,
            object=args.object, mode=args.mode, refs=refs, tta=self.plan.tta, memory=memory,
            warmup=args.warmup, window=args.window, max_map_side=args.max_map_side,
            **self.plan.bank.identity(),
        )  # fmt: skip
        self.threshold_id = threshold_id(self.fingerprint)
        banked = memory > 0 and bool(args.normal)  # then the rolling rule decides
        self.decisions = plan_decisions(args, self.threshold_id, banked)

    def line(self, args: argparse.Namespace) -> Any:
        """Load the stack, the bank and the threshold; the engine on --out."""
        from anoclip.inline.line import Line

        det = self.plan.detector(args)
        bank = self.plan.bank.load(det, args.object)
        threshold = self.decisions.threshold
        if self.decisions.normals:
            threshold = calibrate_on_normals(det, self.decisions, args, self.plan,
                                             self.threshold_id, bank)  # fmt: skip
        return Line(det, self.setup, Path(args.out), bank=bank, threshold=threshold,
                    fingerprint=self.fingerprint)  # fmt: skip


def export(line: Any, args: argparse.Namespace) -> Path | None:
    """OUT/scores.csv, threshold.json and report.html from the store (decided parts)."""
    from anoclip.cli.verdicts import write_detect_report
    from anoclip.results.writer import SCORES, THRESHOLD, write_rows

    stored = line.store.since(0, 10**9)
    rows = [
        {"source": r.source, "name": r.id, "score": f"{r.score:.8f}", "width": r.width,
         "height": r.height, "decision": r.decision, "score/threshold": f"{r.ratio:.6g}",
         "threshold_method": r.method or ""}
        for r in stored if r.score is not None
    ]  # fmt: skip
    write_rows(line.out / SCORES, rows)
    if line.rule.last is not None:
        line.rule.last.to_json(line.out / THRESHOLD)
    noted = {r.source: r.notes for r in stored if r.notes}
    how = "rolling set rule" if line.rule.fixed is None else line.rule.fixed.method
    info = {"object": args.object, "mode": f"{args.mode} (inline)", "decisions": how}
    return write_detect_report(line.out, rows, line.rule.last, info, args, noted)


def run_serve(args: argparse.Namespace) -> int:
    token = line_token(args)
    plan = LinePlan(args)
    line = plan.line(args)
    import uvicorn

    from anoclip.inline.batcher import Batcher
    from anoclip.inline.service import Limits, create_app

    batcher = Batcher(line.inspect, wait=args.batch_wait, size=plan.plan.runtime.batch_size)
    app = create_app(line, batcher, Limits(args.max_bytes, args.max_pixels, token))
    state = "warming up: " + f"{args.warmup} parts" if line.warming else "deciding"
    print(f"anoclip: serving {args.object} on http://{args.host}:{args.port} (API: /docs), "
          f"{state}, state in {args.out}", file=sys.stderr)  # fmt: skip
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        batcher.close()
        export(line, args)
        line.close()
    return 0


def run_watch(args: argparse.Namespace) -> int:
    from anoclip.inline.watch import Watcher

    folder = Path(args.folder)
    if not folder.is_dir():
        raise UsageError(f"watch {folder}: no such folder")
    line = LinePlan(args).line(args)
    stop, seen, exported = threading.Event(), [0], [0.0]

    def after(count: int) -> None:
        """Progress after each scan; the folder's export (all rows and the report) at most
        every EXPORT_EVERY seconds, as it grows with the parts decided."""
        seen[0] += count
        if time.monotonic() - exported[0] >= EXPORT_EVERY:
            export(line, args)
            exported[0] = time.monotonic()
        print(f"anoclip: {seen[0]} part(s) decided; report {line.out / 'report.html'}",
              file=sys.stderr)  # fmt: skip

    print(f"anoclip: watching {folder} for {args.object}; results in {args.out}", file=sys.stderr)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # a service manager's stop: as Ctrl-C
    try:
        Watcher(folder, line, args.settle, args.poll).run(stop, after)
    except KeyboardInterrupt:
        print("anoclip: stopped; every decided part is in the store", file=sys.stderr)
    finally:
        export(line, args)
        line.close()
    return 0
