"""Run every benchmark against lkbridge and the baseline: `make bench` (or `--quick` to smoke it).

Must run inside the private network namespace (scripts/netns-run sets LKB_TEST_ADDR): the LiveKit
server listens on that address, Mosquitto on 127.0.0.1, and nothing else is ever contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report, sdcard
from bench.footprint import footprint, startup
from bench.fsyncs import FsyncCounter
from bench.latency import fsync_count, send_latency, transcription_latency
from bench.mqttc import BenchMqtt
from bench.notify import NotifyListener
from bench.stack import MQTT_HOST, Stack, machine_info, running_stack
from bench.targets import TARGETS, launch
from bench.throughput import sustained
from lkbridge.log import configure_logging

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("latency", "throughput", "sdcard", "footprint", "startup")
FULL = {
    "messages": 500, "warmup": 50, "duration": 10.0, "rates": [100, 200, 300, 500, 750, 1000],
    "sessions": [1, 10, 50], "settle": 5.0, "window": 30.0, "runs": 5,
    "startup_sessions": [1, 50], "repeats": 3, "sd_iops": 100, "fsync_messages": 200,
}  # fmt: skip
QUICK = {
    "messages": 100, "warmup": 10, "duration": 3.0, "rates": [100, 500],
    "sessions": [1, 10], "settle": 2.0, "window": 5.0, "runs": 2, "startup_sessions": [1, 10],
    "repeats": 2, "sd_iops": 100, "fsync_messages": 50,
}  # fmt: skip


def say(text: str) -> None:
    print(text, flush=True)


def ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (5 s steps)")
    parser.add_argument("--duration", type=float, help="seconds per throughput step (60)")
    parser.add_argument("--messages", type=int, help="timed messages per latency test (1000)")
    parser.add_argument("--rates", type=ints, help="throughput steps, msg/s (50,100,200,300,500,750,1000)")
    parser.add_argument("--sessions", type=ints, help="footprint session counts (1,10,50)")
    parser.add_argument("--runs", type=int, help="start-up runs per session count (5)")
    parser.add_argument("--repeats", type=int, help="alternating (ABAB) repeats of benchmarks "
                        "1-3 and the SD-card stand-in per target (3)")  # fmt: skip
    parser.add_argument("--sd-iops", type=int, dest="sd_iops",
                        help="write IOPS of the SD-card stand-in (100)")  # fmt: skip
    parser.add_argument("--fsync-messages", type=int, dest="fsync_messages",
                        help="messages per fsync-counting pass (200)")  # fmt: skip
    parser.add_argument("--only", type=lambda s: s.split(","), default=list(SCENARIOS),
                        help=f"comma-separated subset of {','.join(SCENARIOS)}")  # fmt: skip
    parser.add_argument("--targets", type=lambda s: s.split(","), default=list(TARGETS),
                        help="comma-separated subset of lkbridge,baseline")  # fmt: skip
    parser.add_argument("--broker-nodelay", action="store_true",
                        help="run Mosquitto with set_tcp_nodelay true (its default is false)")
    parser.add_argument("--profile", action="store_true",
                        help="run both targets of benchmarks 1-3 under pyinstrument (to find where "
                        "time goes; the figures are then not comparable and not kept)")  # fmt: skip
    parser.add_argument("--out", type=Path, help="results directory (bench/results; quick runs "
                        "go to test-logs/bench/ unless this is given)")  # fmt: skip
    args = parser.parse_args(argv)
    unknown = (set(args.only) - set(SCENARIOS)) | (set(args.targets) - set(TARGETS))
    if unknown:
        parser.error(f"unknown scenario(s) or target(s): {', '.join(sorted(unknown))}")
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args


class Run:
    """One benchmark run: the shared stack, the results so far, and where files go."""

    def __init__(self, args: argparse.Namespace, stack: Stack, log_dir: Path) -> None:
        self.args = args
        self.stack = stack
        self.log_dir = log_dir
        self.notify = NotifyListener()
        self.mqtt = BenchMqtt(MQTT_HOST, stack.broker.port)
        self.results: dict[str, Any] = {}
        self.errors: list[str] = []

    def close(self) -> None:
        self.mqtt.close()
        self.notify.close()

    async def guarded(self, what: str, step: Callable[[], Awaitable[Any]]) -> Any:
        """Run one measurement; a failure is recorded and reported, and the run goes on."""
        try:
            return await step()
        except Exception as exc:
            self.errors.append(f"{what}: {exc!r}")
            say(f"  !! {what} failed: {exc!r}")
            traceback.print_exc(file=sys.stdout)
            return None

    def put(self, section: str, name: str, value: Any) -> None:
        if value is not None:
            self.results.setdefault(section, {})[name] = value

    def append(self, section: str, name: str, value: Any) -> None:
        if value is not None:
            self.results.setdefault(section, {}).setdefault(name, []).append(value)

    async def one_session(self, name: str) -> None:
        """Benchmarks 1 to 3 on one process of `name` with one session (one repeat)."""
        args, only = self.args, self.args.only
        target = await launch(
            name, self.stack, 1, self.log_dir, self.notify, profile=self.args.profile
        )
        jobs = []
        try:
            jobs = await self.stack.jobs(1, 30.0)
            job = jobs[0]
            await asyncio.sleep(2.0)  # the bridge side sees the agent's state before timing
            if "latency" in only:
                say(f"[{name}] 1. send → lk.chat latency, {args.messages} messages")
                data = await self.guarded(f"{name} send latency", lambda: send_latency(
                    target, job, self.mqtt, messages=args.messages, warmup=args.warmup))  # fmt: skip
                self.append("latency_send", name, data)
                say(f"[{name}] 2. lk.transcription → message latency, {args.messages} chunks")
                data = await self.guarded(f"{name} transcription latency",
                                          lambda: transcription_latency(
                    target, job, self.mqtt, messages=args.messages, warmup=args.warmup))  # fmt: skip
                self.append("latency_transcription", name, data)
            if "throughput" in only:
                say(f"[{name}] 3. sustained rates {args.rates} msg/s, {args.duration:g} s each")
                data = await self.guarded(f"{name} throughput", lambda: sustained(
                    target, job, self.mqtt, rates=args.rates, duration=args.duration,
                    others=self.stack.server_pids, on_step=self.show_step))  # fmt: skip
                self.append("throughput", name, data)
        finally:
            await target.stop()
            await self.stack.wait_closed(jobs)

    @staticmethod
    def show_step(name: str, step: dict[str, Any]) -> None:
        say(f"  {name} {step['rate']} msg/s: lost {step['lost']}/{step['sent']}, "
            f"p50 {step['p50']} ms, p99 {step['p99']} ms, CPU {step['cpu_percent']} %, "
            f"machine {step['machine_busy_percent']} % busy{'' if step['ok'] else '  <- missed'}")  # fmt: skip

    async def sd_session(self, name: str, mount: Path, count_fsyncs: bool) -> None:
        """Benchmark 2 with the state directory on the SD-card stand-in (one repeat); with
        count_fsyncs, afterwards an untimed pass that counts fsyncs per message (strace)."""
        args = self.args
        target = await launch(name, self.stack, 1, self.log_dir, self.notify, state_root=mount)
        jobs = []
        try:
            jobs = await self.stack.jobs(1, 30.0)
            job = jobs[0]
            await asyncio.sleep(2.0)
            say(f"[{name}] 6. lk.transcription → message latency, state on the SD-card stand-in")
            data = await self.guarded(f"{name} SD-card transcription latency",
                                      lambda: transcription_latency(
                target, job, self.mqtt, messages=args.messages, warmup=args.warmup))  # fmt: skip
            self.append("latency_transcription_sd", name, data)
            if count_fsyncs and FsyncCounter.available():
                say(f"[{name}] 7. fsyncs per message (strace, not timed)")
                data = await self.guarded(f"{name} fsync count", lambda: fsync_count(
                    target, job, self.mqtt, args.fsync_messages, self.log_dir))  # fmt: skip
                self.put("fsyncs", name, data)
                if data:
                    say(f"  {data}")
        finally:
            await target.stop()
            await self.stack.wait_closed(jobs)

    async def all(self) -> None:
        args = self.args
        if {"latency", "throughput"} & set(args.only):
            # ABAB: the targets take turns, so a drift of the shared machine hits both alike.
            for repeat in range(args.repeats):
                for name in args.targets:
                    say(f"-- repeat {repeat + 1}/{args.repeats}: {name}")
                    await self.guarded(f"{name} one-session benchmarks",
                                       lambda n=name: self.one_session(n))  # fmt: skip
        if "sdcard" in args.only:
            why = sdcard.available()
            if why is not None:
                self.errors.append(f"SD-card stand-in skipped: {why}")
                say(f"  !! SD-card stand-in skipped: {why}")
            else:
                with sdcard.sd_card(self.log_dir, write_iops=args.sd_iops) as mount:
                    for repeat in range(args.repeats):
                        for name in args.targets:
                            say(f"-- SD-card repeat {repeat + 1}/{args.repeats}: {name}")
                            await self.guarded(f"{name} SD-card benchmark",
                                               lambda n=name, first=repeat == 0:
                                               self.sd_session(n, mount, first))  # fmt: skip
        if "footprint" in args.only:
            for count in args.sessions:
                for name in args.targets:
                    say(f"[{name}] 4. footprint with {count} idle session(s)")
                    data = await self.guarded(f"{name} footprint {count}", lambda n=name, c=count:
                                              footprint(self.stack, n, c, self.log_dir,
                                                        self.notify, settle=args.settle,
                                                        window=args.window))  # fmt: skip
                    self.append("footprint", name, data)
                    if data:
                        say(f"  peak {data['peak_rss_mb']} MB, idle {data['idle_rss_mb']} MB, "
                            f"CPU {data['cpu_percent']} %")  # fmt: skip
        if "startup" in args.only:
            for count in args.startup_sessions:
                for name in args.targets:
                    say(f"[{name}] 5. start-up to READY=1 with {count} session(s), {args.runs} runs")
                    data = await self.guarded(f"{name} startup {count}", lambda n=name, c=count:
                                              startup(self.stack, n, c, self.log_dir,
                                                      self.notify, runs=args.runs))  # fmt: skip
                    self.append("startup", name, data)
                    if data:
                        say(f"  READY after {data['ready_s']['all']} s")


async def main(args: argparse.Namespace) -> int:
    addr = os.environ.get("LKB_TEST_ADDR")
    if not addr:
        say("bench: LKB_TEST_ADDR is not set; run it as `make bench` or through scripts/netns-run")
        return 2
    configure_logging("warning", "console")  # the agent's and the SDK's logs, in this process
    # SIGINT or SIGTERM cancel the run, so that every process it started is stopped on the way out.
    task = asyncio.current_task()
    assert task is not None
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, task.cancel)
    started = time.monotonic()
    run_name = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_name += "-quick" if args.quick else ""
    run_name += "-profile" if args.profile else ""
    run_name += "-broker-nodelay" if args.broker_nodelay else ""
    log_dir = ROOT / "test-logs" / "bench" / run_name
    log_dir.mkdir(parents=True)
    throwaway = args.quick or args.profile
    out_dir = args.out or (log_dir if throwaway else ROOT / "bench" / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    results: dict[str, Any] = {
        "schema": 2,
        "run": run_name,
        "mode": " ".join(
            ["quick" if args.quick else "full"]
            + ["profile"] * args.profile
            + ["broker-nodelay"] * args.broker_nodelay
        ),
        **info,
        "network": {"livekit": addr, "mqtt": MQTT_HOST, "netns": os.environ.get("LKB_NETNS")},
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "settings": {k: getattr(args, k) for k in (*FULL, "only", "targets")},
    }
    say(f"bench {run_name}: {report.machine_line(results)}")
    say(f"logs in {log_dir}")
    async with running_stack(addr, log_dir, broker_nodelay=args.broker_nodelay) as stack:
        results["broker_config"] = stack.broker.config_lines
        run = Run(args, stack, log_dir)
        try:
            await run.all()
        finally:
            run.close()
    results |= run.results
    results["errors"] = run.errors
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    path = out_dir / f"{run_name}.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    say("")
    for title, body in report.sections(results):
        say(f"== {title}\n{body}\n")
    say(f"results: {path}")
    for chart in report.charts(results, path.with_suffix("")):
        say(f"chart:   {chart}")
    if run.errors:
        say(f"{len(run.errors)} measurement(s) failed: " + "; ".join(run.errors))
    return 1 if run.errors else 0


def run() -> int:
    try:
        return asyncio.run(main(parse_args(None)))
    except asyncio.CancelledError:
        print("bench: interrupted; every process it started was stopped", flush=True)
        return 130


if __name__ == "__main__":
    raise SystemExit(run())
