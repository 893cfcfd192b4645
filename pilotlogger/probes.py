"""Facts about the worker node: cheap, stdlib only, each bounded and never fatal.

Every probe reads a few small files or variables; each runs inside its own guard, so a
missing or odd file yields ``{"error": "..."}`` for that probe and the others go on.
Reads are capped at ``READ_CAP`` bytes.  ``probe_all`` returns them with the time taken.
"""

import os
import time

READ_CAP = 64 * 1024


def _read(path: str) -> str:
    with open(path, "rb") as f:
        return f.read(READ_CAP).decode("utf-8", "replace")


def _first(*paths):
    for path in paths:
        try:
            return _read(path).strip()
        except OSError:
            continue
    return None


def os_facts(environ) -> dict:
    facts: dict = {"kernel": os.uname().release, "arch": os.uname().machine}
    try:
        for line in _read("/etc/os-release").splitlines():
            key, sep, value = line.partition("=")
            if sep and key in ("ID", "NAME", "VERSION_ID", "PRETTY_NAME"):
                facts[key.lower()] = value.strip().strip('"')
    except OSError:
        pass
    try:
        facts["glibc"] = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):
        pass
    return facts


def cpu_facts(environ) -> dict:
    facts: dict = {"logical_cores": os.cpu_count()}
    if hasattr(os, "sched_getaffinity"):
        facts["affinity_cores"] = len(os.sched_getaffinity(0))
    try:
        for line in _read("/proc/cpuinfo").splitlines():
            if line.startswith("model name"):
                facts["model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    quota = _first("/sys/fs/cgroup/cpu.max")  # cgroup v2: "max 100000" or "200000 100000"
    if quota and not quota.startswith("max"):
        limit, period = quota.split()[:2]
        facts["cgroup_cpus"] = round(int(limit) / int(period), 2)
    else:
        q, p = _first("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), _first("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
        if q and p and int(q) > 0:
            facts["cgroup_cpus"] = round(int(q) / int(p), 2)
    return facts


def memory_facts(environ) -> dict:
    facts = {}
    try:
        for line in _read("/proc/meminfo").splitlines():
            if line.startswith("MemTotal:"):
                facts["total_bytes"] = int(line.split()[1]) * 1024
    except OSError:
        pass
    limit = _first("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
    if limit and limit.isdigit() and int(limit) < 1 << 60:  # v1 says "no limit" with a huge number
        facts["cgroup_limit_bytes"] = int(limit)
    return facts


def disk_facts(environ) -> dict:
    st = os.statvfs(os.getcwd())
    return {"path": os.getcwd(), "free_bytes": st.f_bavail * st.f_frsize, "total_bytes": st.f_blocks * st.f_frsize}


def container_facts(environ) -> dict:
    for var, kind in (("APPTAINER_CONTAINER", "apptainer"), ("SINGULARITY_CONTAINER", "singularity")):
        if environ.get(var):
            return {"kind": kind, "image": environ[var]}
    if os.path.exists("/.dockerenv"):
        return {"kind": "docker"}
    if os.path.exists("/run/.containerenv"):
        return {"kind": "podman"}
    return {"kind": None}


def batch_facts(environ) -> dict:
    """Batch system and job id: HTCondor (job ad), Slurm, PBS/Torque, LSF, SGE, grid CE ids."""
    from .config import batch_context

    facts = batch_context(environ)
    ad = environ.get("_CONDOR_JOB_AD")
    if ad:
        try:
            for line in _read(ad).splitlines():
                key, sep, value = line.partition("=")
                if sep and key.strip() == "GlobalJobId":
                    facts["batch_job"] = value.strip().strip('"')
        except OSError:
            pass
    for var in ("GRID_GLOBAL_JOBID", "CREAM_JOBID", "GLOBUS_GRAM_JOB_CONTACT"):
        if environ.get(var):
            facts["grid_job"] = environ[var]
            break
    return facts


def wlcg_features(environ) -> dict:
    """WLCG Machine/Job Features: one small file per key in $MACHINEFEATURES and $JOBFEATURES."""
    facts = {}
    for var, keys in (
        ("MACHINEFEATURES", ("hs06", "total_cpu", "shutdowntime")),
        ("JOBFEATURES", ("allocated_cpu", "hs06_job", "wall_limit_secs", "cpu_limit_secs")),
    ):
        directory = environ.get(var)
        if directory:
            for key in keys:
                value = _first(os.path.join(directory, key))
                if value:
                    try:
                        facts[key] = float(value) if "." in value else int(value)
                    except ValueError:
                        facts[key] = value[:100]
    return facts


PROBES = (
    ("os", os_facts),
    ("cpu", cpu_facts),
    ("memory", memory_facts),
    ("disk", disk_facts),
    ("container", container_facts),
    ("batch", batch_facts),
    ("wlcg", wlcg_features),
)


PROBE_DEADLINE = 3.0


def probe_all(environ, deadline: float = PROBE_DEADLINE) -> dict:
    """Every probe's facts (or its error), and ``probe_ms`` for all of them.

    The probes run in a daemon thread: a read that hangs (a dead NFS mount under the
    working directory...) costs at most ``deadline`` seconds, and its probe — with any
    after it — is reported as timed out.
    """
    import threading

    started = time.monotonic()
    results = {}

    def work():
        for name, probe in PROBES:
            try:
                results[name] = probe(environ)
            except Exception as exc:  # one odd node must not cost us the others, nor the pilot
                results[name] = {"error": "%s: %s" % (type(exc).__name__, exc)}

    worker = threading.Thread(target=work, name="pilotlog-probes", daemon=True)
    worker.start()
    worker.join(deadline)
    facts = {name: results.get(name, {"error": "timed out after %g s" % deadline}) for name, _ in PROBES}
    facts["probe_ms"] = round((time.monotonic() - started) * 1000, 1)
    return facts
