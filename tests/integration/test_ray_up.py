"""`ray up cluster.yaml`, for real: the repository's file, brought up over SSH on two local
addresses, used from a client and from `ray exec`, and brought down with nothing left.

Each address is a "machine" of its own: its sshd runs in new PID and mount namespaces with
its own /root and /tmp, so the file's `ray stop` and home-directory files touch only that
machine, and `ray down` is checked by the processes left in it. Only the hosts, the SSH
user and key, and where the checkout is copied from change in the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from mesh.waiting import wait_until
from tests.integration.debian import needed

# Installing the project on a fresh machine is most of `ray up`: the module's first test
# pays for it in its fixture.
pytestmark = [pytest.mark.integration, pytest.mark.ray_up, pytest.mark.timeout(1500)]
ROOT = Path(__file__).resolve().parents[2]
HEAD, WORKER = "127.0.0.1", "127.0.0.2"
RAY = str(Path(sys.executable).with_name("ray"))
# `ray up` over a fresh machine installs the project in a new venv: minutes, not seconds.
UP_TIMEOUT = 900
EXEC_TIMEOUT = 180


@dataclass
class Machine:
    address: str
    root: Path  # what is /root inside it
    tmp: Path  # what is /tmp inside it
    unshare: subprocess.Popen[bytes]  # outside; its one child, the sshd, is the inside's first

    def init(self) -> psutil.Process:
        [sshd] = psutil.Process(self.unshare.pid).children()
        return sshd

    def processes(self) -> list[str]:
        """Every process in the machine but its sshd (the daemon and its sessions)."""
        inside = os.stat(f"/proc/{self.init().pid}/ns/pid").st_ino
        found = []
        for proc in psutil.process_iter(["name", "cmdline"]):
            with contextlib.suppress(OSError, psutil.Error):
                if proc.info["name"] == "sshd":
                    continue
                if os.stat(f"/proc/{proc.pid}/ns/pid").st_ino == inside:
                    found.append(" ".join(proc.info["cmdline"] or [])[:160])
        return found


@dataclass
class Fleet:
    head: Machine
    worker: Machine
    config: Path  # the rendered cluster.yaml
    up_seconds: float
    down_seconds: float | None = None


def port_free(address: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


def start_machine(base: Path, address: str, sshd: str, key: Path, venv: Path) -> Machine:
    root, tmp = base / f"root-{address}", base / f"tmp-{address}"
    (root / ".sshd").mkdir(parents=True)
    tmp.mkdir()
    tmp.chmod(0o1777)
    (root / ".sshd" / "authorized_keys").write_text(key.with_suffix(".pub").read_text())
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    str(root / ".sshd" / "host_key")], check=True)
    (root / ".sshd" / "config").write_text("\n".join([
        "Port 22", f"ListenAddress {address}", "HostKey /root/.sshd/host_key",
        "AuthorizedKeysFile /root/.sshd/authorized_keys", "PermitRootLogin prohibit-password",
        "PasswordAuthentication no", "StrictModes no", "UsePAM no", "PidFile none",
        "MaxStartups 100", "MaxSessions 100", ""]))
    # /root and the venv are bound before /tmp is covered: a bind holds its directory, not
    # its path, so the machine's own files stay reachable though they live under the
    # test's /tmp. Every machine shares one venv directory: the second `pip install` finds
    # everything there (the file's commands are the same either way).
    script = " && ".join([
        f"mount --bind {root} /root", "mkdir -p /root/actionmesh-venv",
        f"mount --bind {venv} /root/actionmesh-venv", f"mount --bind {tmp} /tmp",
        "mkdir -p /run/sshd", f"exec {sshd} -D -e -f /root/.sshd/config"])
    log = (base / f"sshd-{address}.log").open("wb")
    # --kill-child: when this unshare ends, the machine's first process is killed, and
    # with it every process in the machine.
    process = subprocess.Popen(["unshare", "--mount", "--pid", "--fork", "--mount-proc",
                                "--kill-child", "sh", "-c", script], stdout=log, stderr=log)
    machine = Machine(address, root, tmp, process)
    wait_until(lambda: (process.poll(), port_free(address, 22)),
               lambda seen: seen[0] is not None or not seen[1], timeout=30,
               what=f"sshd listening on {address}:22")
    assert process.poll() is None, (base / f"sshd-{address}.log").read_text()
    return machine


def render(base: Path, key: Path) -> Path:
    """The repository's cluster.yaml with only hosts, user, key and install source changed."""
    config: dict[str, Any] = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    config["provider"]["head_ip"] = HEAD
    config["provider"]["worker_ips"] = [WORKER]
    config["min_workers"] = config["max_workers"] = 1
    config["auth"] = {"ssh_user": "root", "ssh_private_key": str(key)}
    config["file_mounts"]["~/actionmesh"] = str(ROOT)
    rendered = base / "cluster.yaml"
    rendered.write_text(yaml.safe_dump(config, sort_keys=False))
    return rendered


def ray_cli(fleet_config: Path, *args: str, timeout: float = EXEC_TIMEOUT,
            ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAY_UP_enable_autoscaler_v2": "0"}
    return subprocess.run([RAY, *args, str(fleet_config)] if args[0] != "exec" else
                          [RAY, "exec", str(fleet_config), *args[1:]],
                          capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=fleet_config.parent, check=False)


def on_head(fleet: Fleet, command: str) -> subprocess.CompletedProcess[str]:
    return ray_cli(fleet.config, "exec", command)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    sshd = needed("sshd", "openssh-server")
    needed("ssh", "openssh-client")
    needed("rsync", "rsync")
    probe = subprocess.run(["unshare", "--mount", "--pid", "--fork", "--mount-proc", "true"],
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"no PID and mount namespaces here (the machines are made of them): "
                    f"{probe.stderr.strip()}")
    for address in (HEAD, WORKER):
        if not port_free(address, 22):
            pytest.skip(f"port 22 on {address} is taken (Ray's SSH has no port setting)")
    base = tmp_path_factory.mktemp("fleet")
    key = base / "ray_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                   check=True)
    venv = base / "venv"
    venv.mkdir()
    machines: list[Machine] = []
    config = render(base, key)
    # The cluster's tokens, made as the file's comments say, beside it.
    secrets = base / "cluster-secrets"
    secrets.mkdir(mode=0o700)
    for token in ("ray_auth_token", "grpc_token"):
        (secrets / token).write_text(os.urandom(32).hex() + "\n")
    try:
        machines = [start_machine(base, a, sshd, key, venv) for a in (HEAD, WORKER)]
        began = time.monotonic()
        up = ray_cli(config, "up", "-y", "--no-config-cache", timeout=UP_TIMEOUT)
        assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-4000:]
        yield Fleet(machines[0], machines[1], config, time.monotonic() - began)
    finally:
        with contextlib.suppress(Exception):
            ray_cli(config, "down", "-y", timeout=120)
        for machine in machines:
            # Killing the machine's first process kills every process left in it; unshare
            # then ends (it holds SIGTERM back while its child runs).
            with contextlib.suppress(psutil.Error, ValueError):
                machine.init().kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                machine.unshare.wait(timeout=30)
            if machine.unshare.poll() is None:
                machine.unshare.kill()
        for state in Path("/tmp/ray").glob("cluster-actionmesh.*"):
            state.unlink(missing_ok=True)


def agents(fleet: Fleet) -> list[dict[str, Any]] | str:
    """The pool as `mesh agents --json` on the head shows it, or why it could not."""
    done = on_head(fleet, "mesh agents --json")
    # Ray's own lines (with colour codes, so with brackets) come first; the JSON array
    # starts on a line of its own (lines end in CR LF through the SSH terminal).
    start = re.search(r"^\[\r?$|^\[\]", done.stdout, re.MULTILINE)
    try:
        if done.returncode == 0 and start is not None:
            found: list[dict[str, Any]] = json.JSONDecoder().raw_decode(
                done.stdout[start.start():])[0]
            return found
    except ValueError:
        pass
    return f"exit {done.returncode}: {done.stdout[-600:]} {done.stderr[-600:]}"


def test_the_workers_agent_joins_and_actions_run_there_from_a_client_and_the_cli(
        fleet: Fleet) -> None:
    began = time.monotonic()
    found = wait_until(lambda: agents(fleet),
                       lambda seen: isinstance(seen, list) and len(seen) == 1,
                       timeout=600, interval=2.0, what="the worker's agent in the pool")
    assert isinstance(found, list)
    [worker] = found
    assert worker["info"]["address"] == WORKER, worker
    assert "pool:linux-x64" in worker["info"]["labels"]
    assert worker["group"] == "linux-x64", "deploy/pool.yaml, followed from `mesh up`"
    # A Python client on the head finds the cluster by address="auto".
    script = ("import mesh; c = mesh.connect(); "
              "hs = c.submit_many([{'command': ['sh', '-c', "
              "'echo client-$0 > /tmp/ran-client-$0', str(i)], "
              "'labels': ['pool:linux-x64']} for i in range(3)]); "
              "print('RESULT', [h.result(timeout=120).agent_id for h in hs])")
    done = on_head(fleet, f"python -c {shlex.quote(script)}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ran_on = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    assert ran_on == [f"RESULT {[worker['info']['agent_id']] * 3}"], done.stdout[-2000:]
    first_action = time.monotonic() - began
    # They ran in the worker machine: their files are in its /tmp, not the head's.
    assert sorted(p.name for p in fleet.worker.tmp.glob("ran-client-*")) == [
        "ran-client-0", "ran-client-1", "ran-client-2"]
    assert not list(fleet.head.tmp.glob("ran-client-*"))
    done = on_head(fleet, "mesh submit --label pool:linux-x64 -- sh -c "
                          "'echo from-the-cli; touch /tmp/ran-cli'")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "from-the-cli" in done.stdout
    assert (fleet.worker.tmp / "ran-cli").exists()
    print(f"\nray up: {fleet.up_seconds:.1f}s; then the worker's agent and 3 actions "
          f"run there: {first_action:.1f}s more")


def test_ray_down_leaves_no_ray_or_mesh_process_on_any_machine(fleet: Fleet) -> None:
    assert fleet.head.processes(), "the head should be running Ray before the test"
    began = time.monotonic()
    down = ray_cli(fleet.config, "down", "-y", timeout=300)
    assert down.returncode == 0, down.stdout[-3000:] + down.stderr[-3000:]
    left = wait_until(lambda: fleet.head.processes() + fleet.worker.processes(),
                      lambda found: not found, timeout=120, interval=0.5,
                      what="no process left on either machine")
    assert left == []
    fleet.down_seconds = time.monotonic() - began
    print(f"\nray down: nothing left after {fleet.down_seconds:.1f}s")
