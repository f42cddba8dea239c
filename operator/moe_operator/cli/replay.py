"""`moectl replay`: drive a live OpenAI endpoint with a trace's arrivals and token counts, and measure it.

Why: what the simulator assumes about a replica (prefill rate, decode step time) is checked and calibrated
against a real endpoint this way (``moectl simulate --calibrate replay.json``). Logic: moe_operator.loadtest.replay;
output shape: docs/simulate.md, "moectl replay".
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys

from moe_operator.errors import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "replay",
        help="replay a trace against a live OpenAI endpoint and measure it",
        description="Send a trace's requests (Azure CSV or Mooncake JSONL) to an OpenAI-compatible "
        "endpoint at their arrival times, streaming, and record TTFT, TPOT and tokens.",
    )
    p.add_argument("--trace", required=True, metavar="FILE", help="Azure LLM trace .csv or Mooncake .jsonl")
    p.add_argument("--endpoint", required=True, metavar="URL", help="API base URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", metavar="NAME", help="model to ask for (default: the endpoint's first /v1/models entry)")
    p.add_argument(
        "--speedup", type=float, default=1.0, metavar="N", help="arrivals N times faster than recorded (default 1)"
    )
    p.add_argument(
        "--scale-tokens",
        type=float,
        default=1.0,
        metavar="F",
        help="multiply prompt and output tokens (and Mooncake's 512-token blocks) by F, at least 1 (default 1)",
    )
    p.add_argument("--max-prompt-tokens", type=int, default=None, metavar="N",
                   help="cut longer prompts (after --scale-tokens) to N tokens, e.g. to fit a small model's context")
    p.add_argument(
        "--duration", type=float, default=None, metavar="S", help="replay only arrivals in the first S seconds"
    )
    p.add_argument("--max-in-flight", type=int, default=64, metavar="K",
                   help="open requests at most; an arrival over K is recorded as rejected_client (default 64)")
    p.add_argument(
        "--timeout", type=float, default=120.0, metavar="S", help="seconds a request may take in all (default 120)"
    )
    p.add_argument(
        "--window", type=float, default=30.0, metavar="S", help="seconds per window in the report (default 30)"
    )
    p.add_argument("--replicas", type=int, default=1, metavar="N",
                   help="replicas serving the endpoint during the run (recorded for --calibrate; default 1)")
    p.add_argument("--ignore-eos", action="store_true",
                   help="send vLLM's ignore_eos so answers have exactly max_tokens (moe-runtime ignores it)")
    p.add_argument("--out-json", metavar="FILE", help="write the measurements as JSON to FILE ('-' for stdout)")
    p.add_argument("--plot", metavar="PNG", help="write per-window throughput and TTFT/TPOT percentiles to this PNG")
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    if args.max_in_flight < 1:
        raise UserError(f"--max-in-flight must be >= 1, got {args.max_in_flight}")
    if not args.timeout > 0:
        raise UserError(f"--timeout must be > 0 seconds, got {args.timeout:g}")
    if not args.window > 0:
        raise UserError(f"--window must be > 0 seconds, got {args.window:g}")
    if args.replicas < 1:
        raise UserError(f"--replicas must be >= 1, got {args.replicas}")
    if args.plot and not args.plot.lower().endswith(".png"):
        raise UserError(f"--plot {args.plot!r} must name a .png file")
    for flag, path in (("--out-json", args.out_json), ("--plot", args.plot)):   # before the run, not after an hour
        if path and path != "-":
            parent = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
                raise UserError(f"{flag} {path}: directory {parent} does not exist or is not writable")


async def _main(args, base_url: str, planned, console) -> tuple:
    """Probe, then replay with Ctrl-C/SIGTERM setting the stop event (in-flight requests are cancelled)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from moe_operator.loadtest.replay import probe, replay

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    handled = []
    for s in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(s, stop.set)
            handled.append(s)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / not POSIX
            pass
    api_key = os.environ.get("MOECTL_REPLAY_API_KEY", "EMPTY")
    try:
        model = await probe(base_url, args.model, api_key)
        counts = {"sent": 0, "rejected": 0, "done": 0}
        with Progress(TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("{task.fields[status]}"), console=console, transient=True,
                      disable=not sys.stderr.isatty()) as progress:
            task = progress.add_task("replay", total=len(planned), status="")

            def on_event(kind: str, in_flight: int) -> None:
                counts[kind] += 1
                if kind != "done":
                    progress.advance(task)
                progress.update(
                    task, status=f"{in_flight} in flight, {counts['done']} done, {counts['rejected']} rejected"
                )

            run_ = await replay(planned, base_url, model, max_in_flight=args.max_in_flight, timeout_s=args.timeout,
                                stop=stop, on_event=on_event, api_key=api_key,
                                extra_body={"ignore_eos": True} if args.ignore_eos else None)
        return run_
    finally:
        for s in handled:
            loop.remove_signal_handler(s)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from moe_operator.loadtest.replay import build_doc, normalize_endpoint, plan_requests, plot_replay

    _check(args)
    base_url = normalize_endpoint(args.endpoint)
    trace, planned = plan_requests(args.trace, args.speedup, args.scale_tokens, args.duration, args.max_prompt_tokens)
    console = Console(stderr=True)
    result = asyncio.run(_main(args, base_url, planned, console))
    doc = build_doc(result, trace_file=args.trace, trace=trace, planned=planned, base_url=base_url,
                    speedup=args.speedup, scale=args.scale_tokens, duration_s=args.duration,
                    max_prompt_tokens=args.max_prompt_tokens,
                    max_in_flight=args.max_in_flight, timeout_s=args.timeout, window_s=args.window,
                    replicas=args.replicas, ignore_eos=args.ignore_eos)
    if args.out_json and args.out_json != "-":
        try:
            with open(args.out_json, "w") as f:
                json.dump(doc, f, indent=1)
        except OSError as exc:
            raise UserError(f"cannot write {args.out_json}: {exc.strerror}") from None
    if args.plot:
        plot_replay(doc, args.plot)
    if args.out_json == "-":
        from moe_operator.cli._common import write_stdout

        write_stdout(json.dumps(doc, indent=1) + "\n")
    else:
        _print_summary(doc)
    return 130 if result.interrupted else 0


def _print_summary(doc: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    s = doc["summary"]

    def f(x, unit="s"):
        return "-" if x is None else f"{x:.3f} {unit}"

    table = Table(
        title=f"replay of {doc['trace']['file']} (x{doc['trace']['speedup']:g}, tokens "
        f"x{doc['trace']['scale_tokens']:g}) "
        f"-> {doc['endpoint']['url']} {doc['endpoint']['model']}" + (" [interrupted]" if doc["interrupted"] else "")
    )
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        (
            "requests (ok / error / timeout / rejected / cancelled)",
            f"{s['requests']} ({s['ok']} / {s['error']} / {s['timeout']} / {s['rejected_client']} / {s['cancelled']})",
        ),
        ("wall time", f(s["wall_s"])),
        ("output tokens/s", f(s["output_tokens_per_s"], "tok/s")),
        ("completion tokens (asked)", f"{s['completion_tokens']} ({s['completion_tokens_asked']})"),
        (
            "prompt tokens (cached by server / trace hint)",
            f"{s['prompt_tokens']} ({s['cached_prompt_tokens']} / {s['cached_prompt_tokens_hint']})",
        ),
        ("TTFT p50 / p95 / p99", f"{f(s['ttft_p50_s'])} / {f(s['ttft_p95_s'])} / {f(s['ttft_p99_s'])}"),
        ("TPOT p50 / p95", f"{f(s['tpot_p50_s'])} / {f(s['tpot_p95_s'])}"),
        ("send lag p95", f(s["send_lag_p95_s"])),
        ("peak in flight", str(s["peak_in_flight"])),
    ]
    for k, v in rows:
        table.add_row(k, v)
    Console().print(table)
