"""`python -m bench [--runs N] [--quick] [--only SECTION]`: benchmarks -> RESULTS.md and results.json.

Full runs write to bench/ (the committed results); --quick is a smoke test (1 run, smaller
loads) and writes to a temp directory unless --out says otherwise, so it never replaces
the committed figures. --only re-runs one section and merges it into the results already there;
--render-only rewrites RESULTS.md from results.json without measuring anything.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from bench import agent_cost, machine, original, release_safety, scale, steady, streams_cost, surge, usual
from bench.log import elapsed_s, say
from bench.measure import Context

SECTIONS: list[ModuleType] = [steady, original, usual, agent_cost, surge, streams_cost, release_safety, scale]
ALIASES = {str(i): module.KEY for i, module in enumerate(SECTIONS, 1)}
HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str]) -> argparse.Namespace:
    keys = [module.KEY for module in SECTIONS]
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=None, help="runs per variant (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="1 run, smaller loads: a smoke test")
    parser.add_argument("--only", choices=keys + list(ALIASES), help="run one section (name or 1-8)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where RESULTS.md and results.json go (default bench/; a temp dir with --quick)")
    parser.add_argument("--keep-dirs", action="store_true", help="keep the stacks' state dirs (logs)")
    parser.add_argument("--render-only", action="store_true",
                        help="measure nothing: rewrite RESULTS.md (and the verdicts) from results.json")
    args = parser.parse_args(argv)
    args.only = ALIASES.get(args.only, args.only)
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    if args.out is None:
        args.out = Path(tempfile.gettempdir()) / "zdh-bench-quick" if args.quick else HERE
    return args


def load_previous(path: Path, quick: bool) -> dict[str, Any]:
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return previous if isinstance(previous, dict) and previous.get("quick") == quick else {}


def main(argv: list[str] | None = None) -> int:
    from bench import report, targets

    args = parse_args(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "results.json"

    def write(results: dict[str, Any]) -> list[dict[str, object]]:
        """The verdicts, results.json and RESULTS.md."""
        results["targets"] = verdicts = targets.evaluate(results)
        json_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
        (args.out / "RESULTS.md").write_text(report.render(results))
        if (results.get("sections") or {}).get(scale.KEY):
            scale.plot(results["sections"][scale.KEY], args.out / scale.PLOT)
        return verdicts

    if args.render_only:
        if not json_path.exists():
            say(f"no {json_path} to render; run the bench first")
            return 2
        write(json.loads(json_path.read_text()))
        say(f"rewrote {args.out / 'RESULTS.md'} from {json_path}")
        return 0
    results: dict[str, Any] = load_previous(json_path, args.quick) if args.only else {}
    sections = dict(results.get("sections") or {})
    results |= {
        "machine": machine.describe(),
        "quick": args.quick,
        "runs": args.runs,
        "command": " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)]),
    }
    ctx = Context(runs=args.runs, quick=args.quick, keep_dirs=args.keep_dirs)
    failed = False
    for module in SECTIONS:
        if args.only and args.only != module.KEY:
            continue
        run: Callable[[Context], dict[str, object]] = module.run
        say(f"section {module.KEY}: {module.TITLE}")
        began = time.monotonic()
        try:
            data = run(ctx)
        except Exception as exc:
            failed = True
            say(f"section {module.KEY} FAILED: {exc}")
            data = {"title": module.TITLE, "error": traceback.format_exc(), "runs": []}
        data |= {
            "seconds": round(time.monotonic() - began, 1),
            "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_average_after": machine.load_average(),
            "runs_per_variant": args.runs,
        }
        sections[module.KEY] = data
        say(f"section {module.KEY} done in {data['seconds']} s")
    results["sections"] = sections
    results["code_fingerprint_end"] = machine.code_fingerprint()
    results["git_head_end"] = machine.git_head()
    if results["code_fingerprint_end"] != results["machine"]["code_fingerprint"]:
        say("WARNING: agent/, service/, deploy/ or haproxy/ changed during the run; sections may differ")
    results["total_seconds"] = round(elapsed_s(), 1)
    results["load_average_end"] = machine.load_average()
    verdicts = write(results)
    say(f"wrote {args.out / 'RESULTS.md'} and {json_path} ({results['total_seconds']} s)")
    for target in verdicts:
        say(f"target {'met' if target['met'] else 'MISSED'}: {target['target']}: {target['measured']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
