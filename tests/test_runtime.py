"""The worker process's runtime, as `triage worker` builds it (worker/runtime.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

from config.settings import Settings
from tests.services import ROOT, settings_env

# Builds the runtime as a worker process does, then says which of its long-lived objects a
# full collection would still walk (gc.get_objects lists generations 0-2, not the frozen).
PROBE = """
import gc, json, logging, os
from worker.runtime import close_runtime, get_runtime

logging.basicConfig(level=logging.INFO)

runtime = get_runtime()
walked = {id(o) for o in gc.get_objects()}
index = runtime.services.lexical
long_lived = {
    "lexical postings": index._postings,
    "lexical keys": index.keys,
    "engine": runtime.services.engine,
}
gc.collect()  # what is made after start-up is still collected
print(json.dumps({
    "frozen": gc.get_freeze_count(),
    "walked": sorted(name for name, o in long_lived.items() if id(o) in walked),
}), flush=True)
close_runtime()
os._exit(0)
"""


def test_a_worker_leaves_its_start_up_heap_out_of_full_collections(
    worker_settings: Callable[..., Settings],
) -> None:
    settings = worker_settings(hybrid_alpha=0.5)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env={**settings_env(settings), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # The lexical index and the clients are frozen: a full collection, which may fall
    # inside a decision section, no longer walks them.
    assert out["walked"] == []
    assert out["frozen"] > 10_000
    assert "start-up heap frozen" in proc.stderr
