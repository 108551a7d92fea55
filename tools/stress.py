"""The lifecycle stress (docs/engine.md#lifecycle): short processes that load the native library
and exit, fork, or close models while forward passes run, again and again. Any signal, any
unexpected exit status and any hang fails it: a test binary that passes its tests and then
dies at exit counts as a failure here.

    python tools/stress.py --seconds 60          # make test: round-robin for about a minute
    python tools/stress.py --runs 200 --targets rust,py-exit,py-fork
                                                 # make stress

Targets: each cargo test binary by name (`boundary`, `engine`, `lifecycle`, `aoti`, `limits`,
..., `core-unit`, `ffi-unit`; `rust` = all of them; built here with `cargo test --no-run`;
`lifecycle` runs each of its scenarios once per run, `fuzz` a 2 s pass), `py-exit` is
tests/lifecycle/exit_in_flight.py (its three ways to exit in turn), `py-fork` is
tests/lifecycle/fork_child.py. The output of each failed run is kept in target/stress/.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "target" / "stress"
FIXTURES = ROOT / "tests" / "fixtures" / "out"
# Every cargo test binary of the workspace: (package, test target; None = the crate's unit tests).
BINARIES = {
    "boundary": ("torchspark", "boundary"),
    "engine": ("torchspark-core", "engine"),
    "lifecycle": ("torchspark", "lifecycle"),
    "ffi-unit": ("torchspark", None),
    "core-unit": ("torchspark-core", None),
    "aoti": ("torchspark-core", "aoti"),
    "concurrency": ("torchspark-core", "concurrency"),
    "decode_memory": ("torchspark-core", "decode_memory"),
    "fuzz": ("torchspark-core", "fuzz"),
    "general": ("torchspark-core", "general"),
    "limits": ("torchspark-core", "limits"),
    "one_path": ("torchspark-core", "one_path"),
    "pipeline": ("torchspark-core", "pipeline"),
    "reload": ("torchspark-core", "reload"),
    "scoring": ("torchspark-core", "scoring"),
    "text": ("torchspark-core", "text"),
    "text_embed": ("torchspark-core", "text_embed"),
}
# `--targets rust`: all of them (the issue-25 check: 200 consecutive runs of each binary).
GROUPS = {"rust": list(BINARIES)}
# The fuzz binary's pass per run (its own default is 60 s; `make fuzz` runs the long one).
FUZZ_SECONDS_PER_RUN = "2"
PY_EXITS = [("return", 0), ("sys.exit", 3), ("atexit-scores", 0)]
HANG_SECONDS = 300


def cargo_binary(package: str, test: str | None) -> str:
    """Builds (if needed) and returns the path of one cargo test binary (None: the unit tests)."""
    which = ["--lib"] if test is None else ["--test", test]
    out = subprocess.run(
        ["cargo", "test", "--release", "--locked", "-p", package, *which, "--no-run"]
        + ["--message-format=json"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if (
            msg.get("reason") == "compiler-artifact"
            and msg.get("executable")
            and (msg["target"]["name"] == test or (test is None and msg["profile"]["test"]))
        ):
            return msg["executable"]
    raise SystemExit(f"cargo built no test binary {test or 'lib'} of {package}")


def commands(targets: list[str]) -> dict[str, object]:
    """Each target's command for its n-th run (a function of n)."""
    model, png = str(FIXTURES / "resnet20.pt"), str(FIXTURES / "images" / "digit_00_label0.png")
    scripts = ROOT / "tests" / "lifecycle"
    made: dict[str, object] = {}
    for t in targets:
        if t in BINARIES:
            exe = cargo_binary(*BINARIES[t])
            made[t] = lambda n, exe=exe: ([exe, "--test-threads=2"], 0)
        elif t == "py-exit":
            made[t] = lambda n: (
                [
                    sys.executable,
                    str(scripts / "exit_in_flight.py"),
                    model,
                    png,
                    PY_EXITS[n % 3][0],
                    str(n),
                ],
                PY_EXITS[n % 3][1],
            )
        elif t == "py-fork":
            made[t] = lambda n: (
                [sys.executable, str(scripts / "fork_child.py"), model, png, str(n)],
                0,
            )
        else:
            known = ", ".join([*BINARIES, "py-exit", "py-fork", *GROUPS])
            raise SystemExit(f"unknown target {t} ({known})")
    return made


def run(target: str, n: int, argv: list[str], expect: int) -> str | None:
    """One run; None when it ended as expected, else what went wrong (its output is kept)."""
    env = dict(
        os.environ,
        TORCHSPARK_LIFECYCLE_RUNS="1",
        TORCHSPARK_LIFECYCLE_SEED=str(n),
        TORCHSPARK_FUZZ_SECONDS=FUZZ_SECONDS_PER_RUN,
        TORCHSPARK_FUZZ_SEED=str(n),
    )
    try:
        p = subprocess.run(
            argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=HANG_SECONDS
        )
        rc, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out = None, f"{e.stdout or ''}{e.stderr or ''}"
    if rc == expect:
        return None
    if rc is None:
        what = f"hang (killed after {HANG_SECONDS} s)"
    elif rc < 0:
        what = f"signal {signal.Signals(-rc).name}"
    else:
        what = f"exit status {rc} (expected {expect})"
    OUT.mkdir(parents=True, exist_ok=True)
    log = OUT / f"{target}.{n}.log"
    log.write_text(f"$ {' '.join(argv)}\n{what}\n{out}")
    return f"{what}: {log.relative_to(ROOT)}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, help="round-robin until this budget is spent")
    ap.add_argument("--runs", type=int, help="runs of each target")
    ap.add_argument("--targets", default="boundary,lifecycle,py-exit,py-fork")
    args = ap.parse_args()
    if (args.seconds is None) == (args.runs is None):
        ap.error("give --seconds or --runs")
    targets = [x for t in args.targets.split(",") if t for x in GROUPS.get(t, [t])]
    if not (FIXTURES / "expected.json").exists():  # the test binaries make them too
        subprocess.run(
            [sys.executable, str(ROOT / "tests/fixtures/make_fixtures.py"), str(FIXTURES)],
            check=True,
        )
    made = commands(targets)
    runs, failures = Counter(), {t: [] for t in targets}
    started = time.monotonic()
    n = 0
    while True:
        for t in targets:
            argv, expect = made[t](n)
            bad = run(t, n, argv, expect)
            runs[t] += 1
            if bad:
                failures[t].append(bad)
                print(f"[stress] {t} run {n}: {bad}", flush=True)
        n += 1
        if n % 10 == 0:  # a long `make stress` shows where it is, and what a stop leaves
            bad = sum(len(f) for f in failures.values())
            print(f"[stress] {n} runs of each target in {time.monotonic() - started:.0f} s, "
                  f"{bad} failed", flush=True)  # fmt: skip
        if args.runs is not None and n >= args.runs:
            break
        if args.seconds is not None and time.monotonic() - started >= args.seconds:
            break
    took = time.monotonic() - started
    for t in targets:
        kinds = Counter(f.split(":")[0] for f in failures[t])
        detail = ", ".join(f"{k} x{v}" for k, v in kinds.items()) or "none"
        print(f"[stress] {t}: {runs[t]} runs, failures: {detail}", flush=True)
    failed = sum(len(f) for f in failures.values())
    print(f"[stress] {sum(runs.values())} processes in {took:.0f} s, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
