"""A private Redis Sentinel group for tests: a master, a replica and N sentinels
(`redis-server --sentinel`), each on a free port of its own with its own config file in a temp
folder. The shared Redis on 6379 is never touched.

Failover is fast on purpose: a master that does not answer for ``down_after_ms`` is down,
and with a quorum of sentinels agreeing the replica is promoted within seconds.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.faults.harness import PrivateRedis
from tests.services import free_port
from tickets.model import TicketKey

MASTER_NAME = "mymaster"


def _binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        reason = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI"):  # part of the CI machine: its absence is a failure
            pytest.fail(reason)
        pytest.skip(reason)
    return binary


def _wait(predicate: Any, timeout: float, what: str) -> float:
    start = time.monotonic()
    while True:
        try:
            if predicate():
                return time.monotonic() - start
        except redis.RedisError:
            pass
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


class Node(PrivateRedis):
    """One redis-server process (a data node or a sentinel) started from its own config file;
    kill() and stop() are PrivateRedis's."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        config: list[str],
        *,
        sentinel: bool,
        port: int | None,
        password: str | None,
    ) -> None:
        self.password = password
        folder = workdir / name
        folder.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        # Sentinel rewrites its config file (the state it learns): it must be writable.
        self.config = folder / f"{name}.conf"
        self.config.write_text(
            "\n".join([f"port {port}", "bind 127.0.0.1", f'dir "{folder}"', *config]) + "\n"
        )
        self.argv = [_binary(), str(self.config)] + (["--sentinel"] if sentinel else [])
        super().__init__(folder, port)

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT)
        client = self.client()
        _wait(client.ping, 20, f"redis-server on port {self.port}")

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password, socket_timeout=2)


class SentinelGroup:
    """A master, ``replicas`` replicas and ``sentinels`` sentinels (quorum: a majority) on
    127.0.0.1; ``extra`` lines go into the data nodes' configuration.

    ``password`` protects the data nodes (the URL carries it), ``sentinel_password`` the
    sentinels (TRIAGE_REDIS_SENTINEL_PASSWORD)."""

    def __init__(
        self,
        workdir: Path,
        *,
        sentinels: int = 3,
        replicas: int = 1,
        password: str | None = None,
        sentinel_password: str | None = None,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 10_000,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.password, self.sentinel_password = password, sentinel_password
        self.nodes: list[Node] = []
        auth = [f"requirepass {password}", f"masterauth {password}"] if password else []
        # No 5 s wait for more replicas before a full sync (Redis 7's diskless default).
        data = ["save ''", "appendonly no", "repl-diskless-sync-delay 0", *auth, *extra]
        try:
            self.master = self._node(workdir, "master", data, sentinel=False)
            self.replicas = [
                self._node(
                    workdir,
                    f"replica{i}",
                    [*data, f"replicaof 127.0.0.1 {self.master.port}"],
                    sentinel=False,
                )
                for i in range(replicas)
            ]
            _wait(self._replicas_linked, 20, "the replicas to sync")
            quorum = sentinels // 2 + 1
            watch = [
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master.port} {quorum}",
                f"sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}",
                f"sentinel failover-timeout {MASTER_NAME} {failover_timeout_ms}",
                f"sentinel parallel-syncs {MASTER_NAME} 1",
            ]
            if password:
                watch.append(f"sentinel auth-pass {MASTER_NAME} {password}")
            if sentinel_password:
                # Sentinels talk to each other with the same password.
                watch += [
                    f"requirepass {sentinel_password}",
                    f"sentinel sentinel-pass {sentinel_password}",
                ]
            # Each sentinel is told the others and the replica up front (by the ids it is
            # given), instead of learning them from hello messages every 2 s.
            ids = [secrets.token_hex(20) for _ in range(sentinels)]
            ports = [free_port() for _ in range(sentinels)]
            known = [
                f"sentinel known-replica {MASTER_NAME} 127.0.0.1 {r.port}" for r in self.replicas
            ]
            self.sentinels = [
                self._node(
                    workdir,
                    f"sentinel{i}",
                    [
                        *watch,
                        *known,
                        f"sentinel myid {ids[i]}",
                        *(
                            f"sentinel known-sentinel {MASTER_NAME} 127.0.0.1 {ports[j]} {ids[j]}"
                            for j in range(sentinels)
                            if j != i
                        ),
                    ],
                    sentinel=True,
                    port=ports[i],
                )
                for i in range(sentinels)
            ]
            _wait(self._all_see_each_other, 30, "the sentinels to find each other")
        except BaseException:
            self.stop()
            raise

    def _node(
        self,
        workdir: Path,
        name: str,
        config: list[str],
        *,
        sentinel: bool,
        port: int | None = None,
    ) -> Node:
        password = self.sentinel_password if sentinel else self.password
        node = Node(workdir, name, config, sentinel=sentinel, port=port, password=password)
        self.nodes.append(node)
        return node

    def _client(self, port: int, *, sentinel: bool = False) -> redis.Redis:
        password = self.sentinel_password if sentinel else self.password
        return redis.Redis(port=port, password=password, socket_timeout=2)

    def _replicas_linked(self) -> bool:
        return all(
            self._client(r.port).info("replication").get("master_link_status") == "up"
            for r in self.replicas
        )

    def _all_see_each_other(self) -> bool:
        n = len(self.sentinels)
        for s in self.sentinels:
            client = self._client(s.port, sentinel=True)
            if len(client.execute_command("SENTINEL", "SENTINELS", MASTER_NAME)) != n - 1:
                return False
            replicas = client.execute_command("SENTINEL", "REPLICAS", MASTER_NAME)
            if len(replicas) != len(self.replicas):
                return False
        return True

    # --- what a test uses -----------------------------------------------------------------

    @staticmethod
    def server_version() -> str:
        out = subprocess.run([_binary(), "--version"], capture_output=True, text=True)
        return out.stdout.split(" sha=")[0].strip()

    def url(self, db: int = 0) -> str:
        """TRIAGE_REDIS_URL: kombu's form, every sentinel listed."""
        auth = f":{self.password}@" if self.password else ""
        return ";".join(f"sentinel://{auth}127.0.0.1:{s.port}/{db}" for s in self.sentinels)

    def master_port(self) -> int:
        """The master's port as the first answering sentinel names it."""
        for s in self.sentinels:
            try:
                reply = self._client(s.port, sentinel=True).execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME
                )
                return int(reply[1])
            except redis.RedisError:
                continue
        raise AssertionError("no sentinel answers")

    def node(self, port: int) -> Node:
        [node] = [n for n in self.nodes if n.port == port]
        return node

    def data_client(self, port: int) -> redis.Redis:
        return self._client(port)

    def sentinel_client(self, i: int = 0) -> redis.Redis:
        return self._client(self.sentinels[i].port, sentinel=True)

    def kill_master(self) -> tuple[int, float]:
        """SIGKILL the current master; then as wait_promoted."""
        old = self.master_port()
        self.node(old).kill()
        return self.wait_promoted(old)

    def wait_promoted(self, old: int) -> tuple[int, float]:
        """Wait until the sentinels name a master other than ``old`` and it takes writes;
        returns its port and the seconds it took."""
        start = time.monotonic()
        _wait(lambda: self.master_port() != old, 60, "the sentinels to promote a replica")
        new = self.master_port()
        _wait(
            lambda: self._client(new).info("replication")["role"] == "master",
            30,
            "the promoted replica to become master",
        )
        return new, time.monotonic() - start

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()


def queued_ids(client: redis.Redis, queue: str) -> set[str]:
    """The ticket ids of the messages waiting in ``queue`` (a message's task id names its
    first ticket: tickets/queue.py)."""
    out = set()
    for raw in client.lrange(queue, 0, -1):  # type: ignore[union-attr]
        task_id = json.loads(raw)["headers"]["id"]
        out.add(TicketKey.from_id(task_id.rsplit(":", 1)[0]).ticket_id)
    return out
