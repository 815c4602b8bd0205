"""Where a hook call's time goes: the service path run in-process, stage by stage.

    python benchmarks/profile_service.py [--sizes medium,large] [--repeat 15] [--cprofile]

Runs the same steps as `hookcall.HookCall` (decode, prepare, PatientRecord.build, assess, the
history read when a card is built, card, response JSON, audit write to SQLite, the log line) on
the benchmark's records, and times each one (median of --repeat). Selectors are timed one by
one (the first computation per request; later uses hit the per-request cache). The cost of one
hop to the thread pool (`anyio.to_thread.run_sync`, 2 per call) is measured on its own.
`--cprofile` adds the top functions of a cProfile run of decide() and of the whole path.
Nothing here goes over HTTP; run.py measures that.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import gc
import io
import logging
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import orjson  # noqa: E402
from records import choose, load_record, patient_view_body, survey, synthea_dir  # noqa: E402

REPO = HERE.parent


class GcTimer:
    """Total time spent in the cyclic garbage collector, from gc.callbacks."""

    def __init__(self) -> None:
        self.total = 0.0
        self.collections = [0, 0, 0]
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._started
            self.collections[info["generation"]] += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="medium,large")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--cprofile", action="store_true")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--library", type=Path, default=REPO / "pathways")
    parser.add_argument("--cards", type=Path, default=REPO / "cards")
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.freeze() after loading, as proposed for the service",
    )
    args = parser.parse_args(argv)

    import anyio

    from msht_cds import hookcall, routes
    from msht_cds.cdshooks import CdsResponse
    from msht_cds.config import Settings
    from msht_cds.library import evaluate
    from msht_cds.library.assess import assess
    from msht_cds.logs import configure_logging
    from msht_cds.record import PatientRecord
    from msht_cds.runtime import Runtime, collector_paused
    from msht_cds.service import (
        CallSettings,
        Decision,
        History,
        _card_for_hook,
        decide,
        load_knowledge,
        prepare,
    )

    tmp = tempfile.TemporaryDirectory(prefix="msht-profile-")
    settings = Settings(
        auth="off",
        database_url=f"sqlite:///{tmp.name}/msht-cds.db",
        library_dir=args.library,
        cards_dir=args.cards,
        log_format="json",
    )
    configure_logging("json")
    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    logging.getLogger().handlers[0].setStream(devnull)  # type: ignore[attr-defined]
    knowledge = load_knowledge(args.library, args.cards)
    runtime = Runtime(settings, knowledge)
    runtime.storage.migrate()
    call = CallSettings.from_settings(settings)
    templates = knowledge.plan.templates("patient-view")
    today = dt.datetime.now(dt.UTC).date()
    chosen = choose(survey(synthea_dir()))
    gc.collect()
    if args.gc_freeze:
        gc.freeze()
    gc_timer = GcTimer()
    print(f"objects tracked by the GC: {len(gc.get_objects())}, frozen: {gc.get_freeze_count()}")

    # Per-selector timing: wrap CompiledSelector.facts and time cache misses.
    selector_times: dict[str, list[float]] = defaultdict(list)
    selector_counts: dict[str, int] = {}
    original_facts = evaluate.CompiledSelector.facts

    def timed_facts(self: Any, ev: Any) -> Any:
        if self.key in ev.selector_results:
            return ev.selector_results[self.key]
        started = time.perf_counter()
        found = original_facts(self, ev)
        label = f"{self.spec.resource}: {self.spec.describe}"
        selector_times[label].append(time.perf_counter() - started)
        selector_counts[label] = len(self._candidates(ev))
        return found

    print(
        f"library {knowledge.version}, {len(knowledge.library.compiled)} indicators; "
        f"median of {args.repeat}\n"
    )
    hop = thread_hop_seconds(anyio)
    print(
        f"one thread hop (anyio.to_thread.run_sync of a no-op): {hop * 1e3:.3f} ms; the call "
        "makes 2 (evaluation, audit write)\n"
    )

    for size in [s for s in args.sizes.split(",") if s]:
        record = load_record(chosen[size].path, today)
        body, _ = patient_view_body(record, templates)
        raw = body.with_instance("00000000-0000-4000-8000-000000000000")
        stages: dict[str, list[float]] = defaultdict(list)
        gc_stages: dict[str, list[float]] = defaultdict(list)
        selector_times.clear()
        for _ in range(args.repeat):
            t = time.perf_counter
            marks = [gc_timer.total]

            def mark(marks: list[float] = marks) -> float:
                marks.append(gc_timer.total)
                return time.perf_counter()

            with collector_paused():  # as hookcall.HookCall does, from decode to free
                t0 = t()
                hook_call = hookcall.HookCall(
                    runtime, knowledge, "msht-patient-view", "patient-view", t0
                )
                decoded = hookcall.decode_json(raw)
                t1 = mark()
                request, state = prepare(knowledge, decoded, "patient-view")
                t2 = mark()
                built = PatientRecord.build(
                    request.patient_id,
                    state.resources,
                    encounter_id=request.encounter_id,
                    full_urls=state.full_urls,
                )
                t3 = mark()
                evaluate.CompiledSelector.facts = timed_facts  # type: ignore[method-assign]
                try:
                    assessment = assess(knowledge.library, built, today)
                finally:
                    evaluate.CompiledSelector.facts = original_facts  # type: ignore[method-assign]
                t4 = mark()
                # As the service does: the history is read only when a card is to be built.
                history = hook_call.history(request) if assessment.concern else History()
                t5 = mark()
                card = _card_for_hook(
                    knowledge, request, built, assessment, call, lambda h=history: h
                )
                t6 = mark()
                response = CdsResponse(cards=[card] if card else [])
                payload = response.model_dump_json(exclude_none=True)
                t7 = mark()
                decision = Decision(request, response, assessment)
                runtime.storage.record_call(*hook_call.audit_rows(200, t7 - t0, decision))
                t8 = mark()
                routes.log.info(
                    "hook_call",
                    request_id="x",
                    hook="patient-view",
                    service="msht-patient-view",
                    status=200,
                    library_version=knowledge.version,
                    latency_ms=1.0,
                    cards=0,
                )
                t9 = mark()
                summary = (len(payload), len(assessment.counted), card is not None)
                del decoded, request, state, built, assessment, card, response, decision
                t10 = mark()
            for name, a, b in (
                ("decode (hookcall.decode_json)", t0, t1),
                ("prepare (parse + read_prefetch)", t1, t2),
                ("PatientRecord.build", t2, t3),
                ("assess (all indicators)", t3, t4),
                ("history read (SQLite; only when a card is built)", t4, t5),
                ("card (referral + Jinja)", t5, t6),
                ("response JSON", t6, t7),
                ("audit writes (SQLite commit)", t7, t8),
                ("log line", t8, t9),
                ("free the request's objects", t9, t10),
            ):
                stages[name].append(b - a)
            for i, name in enumerate(list(stages)[:10]):
                gc_stages[name].append(marks[i + 1] - marks[i])
            stages["total in-process"].append(t10 - t0)
            gc_stages["total in-process"].append(marks[-1] - marks[0])
        print(
            f"### {size}: {chosen[size].path.name}, {body.resources} resources sent, "
            f"{body.size / 1e6:.2f} MB, {summary[0]} B response, "
            f"{summary[1]} indicator(s) counted, card: {summary[2]}"
        )
        print("| stage | median ms | share | of which GC, median ms |\n|---|---|---|---|")
        total = statistics.median(stages["total in-process"])
        for name, values in stages.items():
            median = statistics.median(values)
            in_gc = statistics.median(gc_stages[name])
            print(f"| {name} | {median * 1e3:.2f} | {median / total:.0%} | {in_gc * 1e3:.2f} |")
        print(f"| + 2 thread hops | {2 * hop * 1e3:.2f} | | |")
        print()
        print("| selector (first use per request) | candidates | median ms |\n|---|---|---|")
        ranked = sorted(selector_times.items(), key=lambda kv: -statistics.median(kv[1]))
        for label, values in ranked[:15]:
            print(f"| {label} | {selector_counts[label]} | {statistics.median(values) * 1e3:.2f} |")
        rest = sum(statistics.median(v) for _, v in ranked[15:])
        print(f"| ({max(len(ranked) - 15, 0)} more selectors) | | {rest * 1e3:.2f} |")
        print(
            f"\nselectors in all: {len(ranked)}, their sum "
            f"{sum(statistics.median(v) for v in selector_times.values()) * 1e3:.2f} ms\n"
        )

        if args.cprofile:
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(5):
                decoded = orjson.loads(raw)
                request, state = prepare(knowledge, decoded, "patient-view")
                decide(knowledge, request, state, call, today)
            profiler.disable()
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out)
            stats.sort_stats("tottime").print_stats(args.top)
            print(f"cProfile of decode + prepare + decide, 5 calls, by own time ({size}):")
            print(trim(out.getvalue()))
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(args.top)
            print(f"... by cumulative time ({size}):")
            print(trim(out.getvalue()))
    runtime.storage.close()
    tmp.cleanup()
    return 0


def thread_hop_seconds(anyio: Any, n: int = 2000) -> float:
    async def hops() -> float:
        await anyio.to_thread.run_sync(lambda: None)
        started = time.perf_counter()
        for _ in range(n):
            await anyio.to_thread.run_sync(lambda: None)
        return (time.perf_counter() - started) / n

    result: float = anyio.run(hops)
    return result


def trim(text: str) -> str:
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    return "\n".join(line.replace(str(Path(sys.prefix)), "<venv>") for line in lines[start:])


if __name__ == "__main__":
    sys.exit(main())
