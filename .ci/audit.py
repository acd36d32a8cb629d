"""Dependency audit: known vulnerabilities of the installed distributions; exit 1 on any.

Two sources, in this order:

1. ``pip-audit`` (PyPI's per-version JSON, ``/pypi/NAME/VERSION/json``). Where that
   endpoint does not answer (on the development machines only the package registries are
   reachable, and there it answers 404 for every version), pip-audit marks every package
   "not found on PyPI", skips it, and still prints "No known vulnerabilities found" with
   exit code 0: a green that audited nothing. So its skips are counted, not trusted.
2. For each package pip-audit could not audit: PyPI's project JSON (``/pypi/NAME/json``),
   which lists the vulnerabilities of the *latest* release. It audits an installed
   version only if that version is the latest; any other is reported as not audited.
   A yanked installed release fails the audit too (releases are often yanked for security).

Known vulnerabilities that are accepted for now go in ``.ci/audit-ignore.txt``, one id per
line with the reason. ``--strict`` also fails when a package could not be audited.

    python .ci/audit.py [--strict] [--no-pip-audit] [--package NAME==VERSION ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

IGNORE_FILE = Path(__file__).with_name("audit-ignore.txt")
PYPI = "https://pypi.org/pypi"


@dataclass
class Result:
    name: str
    version: str
    vulns: list[str] = field(default_factory=list)  # "ID (fixed in X)"
    unaudited: str | None = None  # why it could not be audited
    yanked: str | None = None


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def installed() -> dict[str, str]:
    out = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            out[canonical(name)] = dist.version
    return out


def ignored_ids(path: Path) -> set[str]:
    if not path.exists():
        return set()
    ids = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        word = line.split("#", 1)[0].strip()
        if word:
            ids.add(word)
    return ids


def run_pip_audit() -> dict[str, Result] | None:
    """pip-audit's verdicts keyed by package; None if pip-audit is not installed."""
    exe = shutil.which("pip-audit")
    if exe is None:
        return None
    out = subprocess.run(
        [exe, "-l", "--format", "json", "--progress-spinner", "off"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    try:
        report = json.loads(out.stdout)
    except json.JSONDecodeError:
        print(f"audit: pip-audit gave no report: {out.stderr.strip()[-500:]}", file=sys.stderr)
        return {}
    results = {}
    for dep in report.get("dependencies", []):
        r = Result(canonical(dep["name"]), dep.get("version", "?"))
        if "skip_reason" in dep:
            r.unaudited = "pip-audit: " + dep["skip_reason"]
        for v in dep.get("vulns", []):
            fixed = ", ".join(v.get("fix_versions", [])) or "no fix yet"
            r.vulns.append(f"{v['id']} (fixed in {fixed})")
        results[r.name] = r
    return results


def from_project_json(name: str, version: str, base: str) -> Result:
    r = Result(name, version)
    try:
        with urllib.request.urlopen(f"{base}/{name}/json", timeout=30) as answer:
            data = json.load(answer)
    except (urllib.error.URLError, OSError, json.JSONDecodeError) as exc:
        r.unaudited = f"registry unreachable: {exc}"
        return r
    files = data.get("releases", {}).get(version, [])
    if files and all(f.get("yanked") for f in files):
        r.yanked = files[0].get("yanked_reason") or "no reason given"
    latest = data.get("info", {}).get("version")
    if latest != version:
        r.unaudited = f"not the latest release ({latest}): its vulnerabilities are not published"
        return r
    for v in data.get("vulnerabilities", []):
        fixed = ", ".join(v.get("fixed_in", [])) or "no fix yet"
        r.vulns.append(f"{v['id']} (fixed in {fixed})")
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--strict", action="store_true", help="fail on packages not audited too")
    ap.add_argument("--no-pip-audit", action="store_true", help="use the project JSON only")
    ap.add_argument("--package", action="append", default=[], help="NAME==VERSION (repeat)")
    ap.add_argument("--pypi-url", default=PYPI)
    ap.add_argument("--ignore-file", type=Path, default=IGNORE_FILE)
    args = ap.parse_args(argv)

    if args.package:
        pins = [p.split("==", 1) for p in args.package]
        wanted = {canonical(name): version for name, version in pins}
    else:
        wanted = installed()
    results: dict[str, Result] = {}
    audited_by_pip_audit = 0
    if not args.no_pip_audit and not args.package:
        found = run_pip_audit()
        if found is None:
            print("audit: pip-audit is not installed; using the project JSON", file=sys.stderr)
        else:
            results = {k: v for k, v in found.items() if v.unaudited is None}
            audited_by_pip_audit = len(results)
            print(
                f"audit: pip-audit audited {audited_by_pip_audit} of {len(wanted)} packages",
                file=sys.stderr,
            )
    for name, version in sorted(wanted.items()):
        if name not in results:
            results[name] = from_project_json(name, version, args.pypi_url.rstrip("/"))

    ignore = ignored_ids(args.ignore_file)
    failures, unaudited = [], []
    for r in sorted(results.values(), key=lambda r: r.name):
        for vuln in r.vulns:
            if vuln.split(" ", 1)[0] in ignore:
                print(f"ignored   {r.name} {r.version}: {vuln}")
            else:
                failures.append(f"{r.name} {r.version}: {vuln}")
        if r.yanked:
            failures.append(f"{r.name} {r.version}: release yanked ({r.yanked})")
        if r.unaudited:
            unaudited.append(f"{r.name} {r.version}: {r.unaudited}")
    for line in unaudited:
        print(f"unaudited {line}")
    for line in failures:
        print(f"FAIL      {line}")
    audited = len(results) - len(unaudited)
    print(
        f"audit: {audited} of {len(results)} packages audited ({audited_by_pip_audit} by "
        f"pip-audit), {len(failures)} problem(s), {len(unaudited)} not audited"
    )
    if failures or (args.strict and unaudited):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
