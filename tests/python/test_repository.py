"""The model repository (model_repository = DIR, supervisor/model_repository.h): NAME.pt and
NAME/VERSION.pt in DIR serve from the start; SIGHUP loads new archives, unloads removed
ones after their jobs, loads changed ones again; a bad archive is reported (to admins) and
the others serve. Real shoald, real files, real SIGHUP."""
import os
import shutil
import signal
import subprocess
import threading
import time

import pytest
import torch

import shoal
import shoal_test_models as models
from conftest import BUILD, NOBODY, crash_from_two_clients, run_as, running_models

SHOALD = os.path.join(BUILD, "bin", "shoald")


def until(what, check, timeout=60):
    """Waits for check() to return something true (a deadline, not a timing assertion)."""
    deadline = time.time() + timeout
    while True:
        try:
            got = check()
        except (shoal.ModelNotFound, shoal.Unavailable):
            got = None
        if got:
            return got
        if time.time() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def names(c):
    return sorted(m["name"] for m in c.models())


def problems(c):
    return {os.path.basename(p["file"]): p for p in c.status()["repository"]["problems"]}


def hup(d):
    d.proc.send_signal(signal.SIGHUP)


def add(c, model, x=1.0):
    return float(c.infer(model, torch.tensor([x]), timeout=30)[0])


def test_archives_serve_from_the_start_and_sighup_loads_new_and_changed_ones(make_daemon, archives, tmp_path):
    repo = tmp_path / "models"
    repo.mkdir()
    shutil.copy(archives["add"], repo / "add.pt")
    shutil.copy(archives["identity"], repo / "identity.pt")
    (repo / "README").write_text("not an archive: ignored\n")
    d = make_daemon(workers=2, args=["--model-repository", str(repo)])
    d.wait_ready("add")
    d.wait_ready("identity")
    with d.client() as c:
        assert names(c) == ["add", "identity"]
        assert add(c, "add") == 3.0
        assert torch.equal(c.infer("identity", torch.arange(3.0)), torch.arange(3.0))
        assert c.status()["repository"] == {"folder": str(repo), "problems": []}
        assert c.health()["ready"]
        paths = {m["name"]: m["path"] for m in c.models()}
        assert paths["add"] == str(repo / "add.pt")  # shown to admins (root here)

    # a new archive + SIGHUP: served
    shoal.export(models.AddConst(5.0), tmp_path / "five.tmp")
    os.replace(tmp_path / "five.tmp", repo / "five.pt")
    hup(d)
    with d.client() as c:
        assert until("five serves", lambda: add(c, "five") == 7.0)
        assert names(c) == ["add", "five", "identity"]
        d.wait_ready("five")

        # a changed archive (a new file renamed over it) + SIGHUP: loaded again
        shoal.export(models.AddConst(50.0), tmp_path / "fifty.tmp")
        os.replace(tmp_path / "fifty.tmp", repo / "five.pt")
        hup(d)
        assert until("five reloaded", lambda: add(c, "five") == 52.0)
        # unchanged archives were left alone
        assert add(c, "add") == 3.0
        assert c.status()["repository"]["problems"] == []
        # what an admin unloads comes back at the next SIGHUP: the folder says it serves
        c.unload("identity")
        assert names(c) == ["add", "five"]
        hup(d)
        until("identity is back", lambda: "identity" in names(c))
    log = open(d.log_path).read()
    assert log.count("model 'add' unloaded") == 0
    assert "five.pt changed; model 'five' is unloaded once its jobs are done and loaded again" in log


def test_a_removed_archive_is_unloaded_after_its_jobs_while_others_serve(make_daemon, archives, tmp_path):
    repo = tmp_path / "models"
    repo.mkdir()
    shutil.copy(archives["add"], repo / "add.pt")
    shutil.copy(archives["sleeps"], repo / "sleeps.pt")
    d = make_daemon(workers=2, args=["--model-repository", str(repo)])
    d.wait_ready("add")
    d.wait_ready("sleeps")

    stop = threading.Event()
    victim = {"served": 0, "errors": []}

    def keep_inferring():  # another client, on the model that stays
        with d.client() as c:
            while not stop.is_set():
                try:
                    assert add(c, "add", 2.0) == 5.0
                    victim["served"] += 1
                except Exception as e:  # noqa: BLE001 - collected and asserted on
                    victim["errors"].append(e)

    in_flight = {}

    def long_job():
        with d.client() as c:
            try:
                in_flight["result"] = c.infer("sleeps", torch.tensor([2.0]), timeout=60)
            except Exception as e:  # noqa: BLE001
                in_flight["result"] = e

    v = threading.Thread(target=keep_inferring)
    v.start()
    j = threading.Thread(target=long_job)
    j.start()
    with d.client() as c:
        until("the sleeps job runs", lambda: any("sleeps" in running_models(w) for w in c.status()["workers"]))
        os.remove(repo / "sleeps.pt")
        hup(d)
        # it takes no new jobs at once, and leaves once its job is done
        until("sleeps refuses new jobs", lambda: _refused(c, "sleeps"))
        j.join(60)
        assert torch.equal(in_flight["result"], torch.tensor([2.0]))  # the accepted job finished
        until("sleeps unloaded", lambda: names(c) == ["add"])
        until("no worker holds sleeps", lambda: all("sleeps" not in w["models"] for w in c.status()["workers"]))
        with pytest.raises(shoal.ModelNotFound, match="'sleeps' is not loaded"):
            c.infer("sleeps", torch.tensor([0.0]))
    stop.set()
    v.join(30)
    assert victim["errors"] == [] and victim["served"] > 0
    assert "model 'sleeps' unloaded" in open(d.log_path).read()


def _refused(c, model):
    try:
        c.infer(model, torch.tensor([0.0]), timeout=30)
    except shoal.ModelNotFound:
        return True
    return False


def test_bad_archives_are_reported_per_file_and_the_others_serve(make_daemon, archives, tmp_path):
    repo = tmp_path / "models"
    repo.mkdir()
    shutil.copy(archives["add"], repo / "add.pt")
    (repo / "junk.pt").write_bytes(b"not a zip")  # corrupt
    shoal.export(models.Noisy(), repo / "noisy.pt", example_inputs=(torch.ones(2),))  # fails its self-check
    shutil.copy(archives["identity"], repo / "open.pt")
    os.chmod(repo / "open.pt", 0o666)  # any user could change the code it runs
    shutil.copy(archives["identity"], repo / "two words.pt")  # not a model name
    d = make_daemon(workers=2, args=["--model-repository", str(repo)])  # starts all the same
    d.wait_ready("add")
    with d.client() as c:
        found = until("four problems", lambda: len(problems(c)) == 4 and problems(c))
        assert "not a zip file" in found["junk.pt"]["error"] and found["junk.pt"]["model"] == "junk"
        assert "loading it failed" in found["noisy.pt"]["error"] and found["noisy.pt"]["model"] == "noisy"
        assert "may be written by every user" in found["open.pt"]["error"] and "chmod o-w" in found["open.pt"]["error"]
        assert "model name 'two words' is invalid" in found["two words.pt"]["error"]
        assert all("then send shoald SIGHUP" in p["error"] for p in found.values())
        until("noisy is gone", lambda: names(c) == ["add"])
        assert add(c, "add") == 3.0
        assert c.health()["ready"]  # a bad file does not hold readiness
        # the `models` reply carries the same list, and `shoal models` prints it
        assert c.repository() == c.status()["repository"]
        cli = subprocess.run([os.path.join(BUILD, "bin", "shoal"), "--socket", d.socket, "models"],
                             capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0, cli.stderr
        assert f"add\tready\t{repo / 'add.pt'}" in cli.stdout
        assert f"junk\tNOT SERVED\t{repo / 'junk.pt'}: archive {repo / 'junk.pt'}: not a zip file" in cli.stdout

        # fixed files serve after the next SIGHUP; a name another model has is that file's problem
        shutil.copy(archives["identity"], tmp_path / "junk.tmp")
        os.replace(tmp_path / "junk.tmp", repo / "junk.pt")
        os.chmod(repo / "open.pt", 0o644)
        os.remove(repo / "noisy.pt")
        os.remove(repo / "two words.pt")
        c.load("taken", archives["add"])
        shutil.copy(archives["identity"], repo / "taken.pt")
        hup(d)
        until("junk and open serve", lambda: names(c) == ["add", "junk", "open", "taken"]
              and c.health()["ready"])
        assert torch.equal(c.infer("junk", torch.ones(2)), torch.ones(2))
        assert list(problems(c)) == ["taken.pt"]
        assert "'taken' is already loaded from another file" in problems(c)["taken.pt"]["error"]
        assert add(c, "taken") == 3.0  # the client's model is untouched
    log = open(d.log_path).read()
    assert "model repository: " + str(repo / "junk.pt") + " (model 'junk')" in log


def test_versions_are_name_colon_version_and_a_plain_name_runs_the_newest(make_daemon, tmp_path):
    repo = tmp_path / "models"
    (repo / "m").mkdir(parents=True)
    shoal.export(models.AddConst(1.0), repo / "m" / "1.pt")
    shoal.export(models.AddConst(2.0), repo / "m" / "2.pt")
    d = make_daemon(workers=1, args=["--model-repository", str(repo)])
    d.wait_ready("m:1")
    d.wait_ready("m:2")
    with d.client() as c:
        assert names(c) == ["m:1", "m:2"]
        assert add(c, "m", 0.0) == 2.0
        assert add(c, "m:1", 0.0) == 1.0
        shoal.export(models.AddConst(10.0), repo / "m" / "10.pt")  # 10 > 2: numbers compare as numbers
        hup(d)
        assert until("m:10 serves", lambda: add(c, "m", 0.0) == 10.0)
        os.remove(repo / "m" / "10.pt")
        os.remove(repo / "m" / "2.pt")
        hup(d)
        assert until("back to m:1", lambda: names(c) == ["m:1"] and add(c, "m", 0.0) == 1.0)


def test_a_model_line_keeps_the_archive_it_names(make_daemon, archives, tmp_path):
    repo = tmp_path / "models"
    repo.mkdir()
    shutil.copy(archives["add"], repo / "add.pt")
    shutil.copy(archives["identity"], repo / "identity.pt")
    conf = tmp_path / "shoald.conf"
    conf.write_text(f"admin_group =\nmodel_repository = {repo}\nmodel = plus=add.pt\n")
    d = make_daemon(workers=1, args=["--config", str(conf)])
    d.wait_ready("plus")
    d.wait_ready("identity")
    with d.client() as c:
        assert names(c) == ["identity", "plus"]  # add.pt serves once, under the line's name
        hup(d)
        until("reloaded", lambda: "configuration reloaded" in open(d.log_path).read())
        assert names(c) == ["identity", "plus"]
        assert add(c, "plus") == 3.0


def test_an_unusable_folder_stops_the_start_and_a_sighup_keeps_what_serves(make_daemon, archives, tmp_path):
    r = subprocess.run([SHOALD, "--socket", str(tmp_path / "s.sock"), "--model-repository", str(tmp_path / "absent")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert f"model_repository {tmp_path / 'absent'}: cannot read the folder" in r.stdout + r.stderr
    assert "unset model_repository" in r.stdout + r.stderr
    repo = tmp_path / "models"
    repo.mkdir()
    shutil.copy(archives["add"], repo / "add.pt")
    d = make_daemon(workers=1, args=["--model-repository", str(repo)])
    d.wait_ready("add")
    os.chmod(repo, 0o777)  # now anyone may put code there
    hup(d)
    with d.client() as c:
        found = until("the folder's problem", lambda: problems(c))
        assert "the folder may be written by every user" in found["models"]["error"]
        assert names(c) == ["add"] and add(c, "add") == 3.0


def test_only_admins_see_the_repository(public_daemon, archives, tmp_path):
    repo = tmp_path / "models"
    repo.mkdir()
    shutil.copy(archives["add"], repo / "add.pt")
    (repo / "junk.pt").write_bytes(b"junk")
    d = public_daemon(workers=1, args=["--model-repository", str(repo)])
    d.wait_ready("add")
    with d.client() as c:
        assert list(problems(c)) == ["junk.pt"]
    r = run_as(NOBODY, d.socket, """
st = c.status()
print("status", "repository" in st, [m["path"] for m in st["models"]])
print("infer", float(c.infer("add", torch.ones(1))[0]))
""")
    assert r.returncode == 0, r.stderr
    assert "status False ['']" in r.stdout and "infer 3.0" in r.stdout


def test_a_crash_loop_makes_a_repository_model_a_problem_until_the_next_sighup(public_daemon, archives, tmp_path):
    repo = tmp_path / "models"
    repo.mkdir()
    shutil.copy(archives["crashy"], repo / "crashy.pt")
    shutil.copy(archives["add"], repo / "add.pt")
    d = public_daemon(workers=2, args=["--model-repository", str(repo), "--crash-loop-limit", "2"])
    d.wait_ready("crashy")
    with d.client() as c:
        crash_from_two_clients(d.socket, c, "crashy")
        # two clients' jobs crashed it: marked failed, then unloaded and reported as its file's problem
        found = until("crashy reported", lambda: "crashy.pt" in problems(c) and problems(c))
        assert "marked failed: it crashed 2 workers for 2 different clients" in found["crashy.pt"]["error"]
        assert "loaded again at the next SIGHUP" in found["crashy.pt"]["error"]
        until("crashy unloaded", lambda: names(c) == ["add"])
        assert c.health()["ready"] and add(c, "add") == 3.0
        hup(d)
        assert until("crashy serves again", lambda: float(c.infer("crashy", torch.ones(1))[0]) == 2.0)
        assert problems(c) == {}


def test_a_file_name_that_is_not_utf8_is_that_files_problem_and_no_worker_dies(make_daemon, archives, tmp_path):
    """A model's name travels to the workers as a str: a file named in another encoding
    (Latin-1 caf\\xe9.pt) is not a model name, reported as its file's problem; it crashed
    every worker that was sent the load, over and over."""
    repo = tmp_path / "models"
    repo.mkdir()
    shutil.copy(archives["add"], repo / "add.pt")
    shutil.copy(archives["identity"], os.path.join(os.fsencode(repo), b"caf\xe9.pt"))
    d = make_daemon(workers=2, args=["--model-repository", str(repo)])
    d.wait_ready("add")
    with d.client() as c:
        found = until("the file's problem", lambda: problems(c))
        (name, problem), = found.items()
        assert name == "caf\\xe9.pt" and "model name 'caf\\xe9' is not UTF-8" in problem["error"], found
        assert names(c) == ["add"] and add(c, "add") == 3.0
        assert c.status()["worker_restarts"] == 0
        hup(d)
        until("read again", lambda: open(d.log_path, errors="replace").read().count(f"model repository {repo}: ") == 2)
        assert add(c, "add") == 3.0 and c.status()["worker_restarts"] == 0
