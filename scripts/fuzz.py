"""Coverage-guided fuzzing of tinystream's connection protocol with atheris.

    pip install -e '.[fuzz]'
    python scripts/fuzz.py --seconds 60     # fuzz for a minute, growing scripts/fuzz_corpus

libFuzzer keeps an input in scripts/fuzz_corpus only when it reaches new coverage,
so the corpus stays small; a crash is saved as crash-* in the current directory.

Each input drives one connection through a fake transport, exactly as
tests/test_fuzz.py does with Hypothesis, and checks the same invariant: every
request gets a well-formed response or a 4xx/5xx and a close, the handler never
sees a request that should have been refused, nothing reaches the event loop's
exception handler or logs as our bug, and the next connection is served.

The input's first byte picks how the client ends (nothing, EOF, reset); the next
four give two split points; the rest are the bytes the client sends.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import atheris  # noqa: E402 - after the path set-up, like the imports below

with atheris.instrument_imports():
    import h11  # noqa: F401 - instrumented: its branches guide the fuzzer too

    import tinystream  # noqa: F401
    from tests.test_fuzz import VALID, check_connection

CORPUS = ROOT / "scripts" / "fuzz_corpus"
ENDINGS = ("none", "eof", "lost")


class _BugLog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            raise AssertionError(f"logged as a bug: {record.getMessage()}")


loop = asyncio.new_event_loop()
loop_errors: list[dict[str, Any]] = []
loop.set_exception_handler(lambda _loop, context: loop_errors.append(context))
logging.getLogger("tinystream").addHandler(_BugLog())
logging.getLogger("tinystream").setLevel(logging.DEBUG)
logging.getLogger("tinystream").propagate = False


def test_one_input(raw: bytes) -> None:
    provider = atheris.FuzzedDataProvider(raw)
    ending = ENDINGS[provider.ConsumeIntInRange(0, 2)]
    cuts = [provider.ConsumeIntInRange(0, 4096), provider.ConsumeIntInRange(0, 4096)]
    data = provider.ConsumeBytes(provider.remaining_bytes())
    loop.run_until_complete(check_connection(data, cuts, ending))
    assert not loop_errors, loop_errors


def seed_corpus(directory: Path) -> None:
    from tests.test_fuzz import HOSTILE

    for index, request in enumerate(VALID + HOSTILE):
        seed = directory / f"seed-{index}"
        if not seed.exists():
            seed.write_bytes(b"\x00\x00\x00\x00\x00" + request)  # no EOF, no split points


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60, help="time bound (default 60)")
    args, rest = parser.parse_known_args()
    if rest:
        # A child run: libFuzzer gets exactly its own arguments and exits by itself.
        atheris.Setup([sys.argv[0], *rest], test_one_input)
        atheris.Fuzz()
        return 0
    # The parent only orchestrates, because libFuzzer ends its process when done.
    CORPUS.mkdir(exist_ok=True)
    seed_corpus(CORPUS)
    fuzzing = subprocess.run(
        [sys.executable, __file__, f"-max_total_time={args.seconds}", "-max_len=8192", str(CORPUS)],
        check=False,
    )
    return fuzzing.returncode  # non-zero: a crash, saved by libFuzzer as crash-*


if __name__ == "__main__":
    sys.exit(main())
