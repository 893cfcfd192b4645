"""Worker-node probes and the DB12-style power figure."""

import json
import os

from pilotlogger import power, probes


def test_probes_on_this_machine_are_real_and_quick():
    facts = probes.probe_all(os.environ)
    assert facts["os"]["kernel"] == os.uname().release and facts["os"]["arch"] == os.uname().machine
    assert facts["cpu"]["logical_cores"] == os.cpu_count()
    assert facts["memory"]["total_bytes"] > 0
    assert facts["disk"]["free_bytes"] > 0 and facts["disk"]["path"] == os.getcwd()
    assert facts["probe_ms"] < 1000
    json.dumps(facts)  # everything is JSON-ready for an event's data


def test_job_environment_is_recognised(tmp_path):
    mjf, jf = tmp_path / "mjf", tmp_path / "jf"
    mjf.mkdir()
    jf.mkdir()
    (mjf / "hs06").write_text("11.5\n")
    (mjf / "total_cpu").write_text("64\n")
    (jf / "allocated_cpu").write_text("8\n")
    (jf / "wall_limit_secs").write_text("172800\n")
    ad = tmp_path / ".job.ad"
    ad.write_text('ClusterId = 42\nGlobalJobId = "schedd.example.org#42.0#1795832978"\n')
    env = {
        "MACHINEFEATURES": str(mjf),
        "JOBFEATURES": str(jf),
        "_CONDOR_JOB_AD": str(ad),
        "APPTAINER_CONTAINER": "/cvmfs/unpacked.cern.ch/el9",
        "GRID_GLOBAL_JOBID": "https://ce:9619/42",
    }
    facts = probes.probe_all(env)
    assert facts["wlcg"] == {"hs06": 11.5, "total_cpu": 64, "allocated_cpu": 8, "wall_limit_secs": 172800}
    assert facts["batch"] == {
        "batch_system": "htcondor",
        "batch_job": "schedd.example.org#42.0#1795832978",
        "grid_job": "https://ce:9619/42",
    }
    assert facts["container"] == {"kind": "apptainer", "image": "/cvmfs/unpacked.cern.ch/el9"}
    assert probes.probe_all({"SLURM_JOB_ID": "77"})["batch"] == {"batch_system": "slurm", "batch_job": "77"}


def test_a_failing_probe_costs_only_itself():
    class Hostile(dict):
        def get(self, key, default=None):
            raise RuntimeError("environment unreadable")

    facts = probes.probe_all(Hostile())
    assert facts["batch"] == {"error": "RuntimeError: environment unreadable"}
    assert "kernel" in facts["os"] and "logical_cores" in facts["cpu"]


def test_db12_style_power():
    result = power.db12(0.01)
    assert result["draws"] == 125000 and result["cpu_s"] > 0
    assert result["db12"] == round(250.0 * 0.01 / result["cpu_s"], 3)


def test_power_and_probe_commands_record_events(pilotlog, tmp_path):
    mjf = tmp_path / "mjf"
    mjf.mkdir()
    (mjf / "hs06").write_text("11\n")
    p = pilotlog("power", "--fraction", "0.01", env={"MACHINEFEATURES": mjf})
    assert p.returncode == 0 and p.stdout.startswith("power of ") and "DB12" in p.stdout
    p = pilotlog("probe", "--emit")
    assert p.returncode == 0 and json.loads(p.stdout)["cpu"]["logical_cores"] == os.cpu_count()
    power_event, os_event = pilotlog.events()
    assert power_event["phase"] == "power" and power_event["data"]["hs06_machine"] == 11
    assert power_event["message"] == "power of %.1f DB12" % power_event["data"]["db12"]
    assert os_event["phase"] == "os" and os_event["data"]["os"]["kernel"] == os.uname().release
    assert pilotlog("power", "--fraction", "0").returncode == 2


def test_wrapper_boot_carries_the_probes(pilotlog):
    assert pilotlog("run", "--", "true").returncode == 0
    boot = pilotlog.events()[0]
    assert boot["data"]["probes"]["os"]["kernel"] == os.uname().release


def test_a_hanging_probe_is_cut_at_the_deadline(monkeypatch):
    import threading
    import time

    release = threading.Event()

    def hangs(environ):
        release.wait(30)
        return {}

    monkeypatch.setattr(probes, "PROBES", (("os", probes.os_facts), ("disk", hangs), ("wlcg", probes.wlcg_features)))
    started = time.monotonic()
    facts = probes.probe_all({}, deadline=0.3)
    release.set()
    assert time.monotonic() - started < 2
    assert "kernel" in facts["os"]
    assert facts["disk"] == facts["wlcg"] == {"error": "timed out after 0.3 s"}
