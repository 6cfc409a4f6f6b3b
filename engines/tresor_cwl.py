"""cwltool for tresor: each CommandLineTool job runs as one TES task of the tresor run this cwltool
is the engine of, created through $TRESOR_IDENTITY_SOCKET.

    python tresor_cwl.py [cwltool options] workflow.cwl params.json

cwltool runs with --no-container: it lays out inputs, temporary and output directories at host
paths, all inside $TRESOR_RUN_DIR, which every task sees at the same path. Only the spawning of a
job's process is replaced (cwltool.job._job_popen): the command becomes a task in the image of
the tool's DockerRequirement (dockerPull; requirement or hint), else $TRESOR_JOB_IMAGE.
A tool names the secrets its task is given (never their values) in a hint:
    $namespaces: {tresor: "https://tresor.dev/cwl#"}
    hints: [{class: "tresor:Secrets", env: [API_TOKEN], files: [ssh_key]}]
The final output object is also written to $TRESOR_RUN_DIR/outputs.json (the run's WES outputs).

cwltool parses CWL's schemas (YAML, about 0.6 s) at every start. `--write-schema-cache` keeps
them parsed beside cwltool (scripts/lib/engines-up.sh runs it once per install), and every run
then loads them in a few milliseconds. The cache lives in the engine's own read-only venv, so it is
trusted exactly as far as the cwltool code beside it.
"""

import io
import json
import logging
import math
import os
import pickle
import shlex
import signal
import sys
import tempfile
import threading
import time

import cwltool.command_line_tool
import cwltool.job
import cwltool.main
import cwltool.process
from cwltool.errors import WorkflowException
from cwltool.executors import MultithreadedJobExecutor

from tresor_tes import (
    FAILURE_STATES,
    SUCCESS_STATES,
    TesClient,
    default_image,
    failure_message,
    split_names,
    task_document,
)

SECRETS_HINT = "https://tresor.dev/cwl#Secrets"
# Seconds between two status requests for one task, while at most POLL_SPREAD tasks are active;
# beyond, each task is asked less often so that the run sends at most ~50 requests a second.
POLL_SECONDS, POLL_SPREAD = 0.3, 16
# The first look, and how much longer each next one waits: short jobs are found ended within a
# few tens of milliseconds, long ones are asked about every POLL_SECONDS.
FIRST_POLL_SECONDS, POLL_GROWTH = 0.02, 1.25
DEFAULT_PARALLEL_CORES = 64
logger = logging.getLogger("cwltool")  # cwltool's: our lines read like its own

tes = None  # a TesClient, made in main(): only an engine task has its socket
# The job each thread is running: cwltool runs the steps of --parallel in threads, and
# _job_popen is not told which job it spawns.
current = threading.local()
# Tasks not yet finished, to cancel when the engine is stopped.
active_tasks, active_lock = set(), threading.Lock()


class TresorCommandLineJob(cwltool.job.CommandLineJob):
    """cwltool's job without containers, remembering itself for _job_popen."""

    def run(self, runtimeContext, tmpdir_lock=None):
        current.job = self
        try:
            super().run(runtimeContext, tmpdir_lock)
        finally:
            current.job = None


class TresorMultithreadedJobExecutor(MultithreadedJobExecutor):
    """--parallel without this host's limits: jobs run where tresor puts them, so cwltool neither
    refuses a request larger than this host nor holds jobs back for its memory (tresor queues
    them). The cores of the jobs running at once are capped by --parallel-max, else
    DEFAULT_PARALLEL_CORES: cwltool starts that many threads, and each polls its task."""

    def __init__(self, max_parallel=0):
        super().__init__(max_parallel)
        self.max_ram = 2**40  # MiB; finite, as cwltool formats it with %d
        if max_parallel < 1:
            self.max_cores = DEFAULT_PARALLEL_CORES


def job_runner(self, runtimeContext):
    # Every tool runs as a task: without this, --no-container refuses a DockerRequirement under
    # `requirements` (a hint it would merely ignore).
    return TresorCommandLineJob


def tes_popen(commands, stdin_path, stdout_path, stderr_path, env, cwd, timelimit=None,
              name=None, **_unused):
    """Stands in for cwltool.job._job_popen: runs `commands` as a TES task and returns its exit
    code, as the process's would be."""
    job = current.job
    docker, _ = job.get_requirement("DockerRequirement")
    image = (docker or {}).get("dockerPull")
    env = dict(env)
    if image:
        # As cwltool does for a container: the image's own PATH, not the engine's.
        env.pop("PATH", None)
    secrets, _ = job.get_requirement(SECRETS_HINT)
    secrets = secrets or {}
    resources = {}
    if job.get_requirement("ResourceRequirement")[0]:
        # Only when the tool asks: cwltool's defaults (1 core, 256 MiB) would be a tight limit.
        resources = {"cpu_cores": math.ceil(job.builder.resources.get("cores", 0)) or None,
                     "ram_gb": (job.builder.resources.get("ram") or 0) / 1024 or None}
    shell_command = "exec " + shlex.join(commands)
    for redirect, path in (("<", stdin_path), (">", stdout_path), ("2>", stderr_path)):
        if path:
            shell_command += f" {redirect} {shlex.quote(path)}"
    task = task_document(
        name=name or "cwl-job", image=image or default_image(), shell_command=shell_command,
        workdir=cwd, env=env, **resources,
        secret_env=split_names(secrets.get("env")), secret_files=split_names(secrets.get("files")))
    task_id = tes.create_task(task)
    with active_lock:
        active_tasks.add(task_id)
    logger.info("[job %s] is TES task %s in %s", name, task_id, task["executors"][0]["image"])
    started, timed_out = time.monotonic(), False
    # Short jobs are the common case: look again soon, then less and less often.
    delay = FIRST_POLL_SECONDS
    try:
        while True:
            time.sleep(delay * max(1, len(active_tasks) / POLL_SPREAD))
            delay = min(delay * POLL_GROWTH, POLL_SECONDS)
            state_task = tes.get_task(task_id)
            state = state_task.get("state")
            if state in SUCCESS_STATES or state in FAILURE_STATES:
                break
            if timelimit and not timed_out and time.monotonic() - started > timelimit:
                logger.warning("[job %s] exceeded its time limit of %d s", name, timelimit)
                tes.cancel_task(task_id)
                timed_out = True
    finally:
        with active_lock:
            active_tasks.discard(task_id)
    if timed_out:
        return -signal.SIGTERM  # what cwltool reports for a process it stopped at the limit
    logs = ((state_task.get("logs") or [{}])[-1].get("logs") or [{}])[-1]
    exit_code = logs.get("exit_code")
    if state in SUCCESS_STATES:
        # What the tool printed to unredirected streams would have reached cwltool's stderr.
        for stream in ("stdout", "stderr"):
            if logs.get(stream) and not (stdout_path if stream == "stdout" else stderr_path):
                sys.stderr.write(logs[stream])
        return exit_code or 0
    if exit_code is None:
        # It never ran to an exit (tresor failed it, or it was canceled): the job fails.
        raise WorkflowException(failure_message(task_id, state_task))
    # The tool ran and exited non-zero: cwltool decides with successCodes whether that failed.
    logger.warning("[job %s] %s", name, failure_message(task_id, state_task))
    return exit_code


def cancel_and_exit(signum, _frame):
    # cwltool's own handler kills local processes only; tresor stops an engine with SIGTERM.
    with active_lock:
        pending = list(active_tasks)
    for task_id in pending:
        try:
            tes.cancel_task(task_id)
        except Exception as e:  # noqa: BLE001 - cancel what can be, report the rest
            logger.error("could not cancel TES task %s: %s", task_id, e)
    logger.error("stopped by signal %d; canceled %d task(s)", signum, len(pending))
    os._exit(128 + signum)  # not sys.exit: step threads would keep the process alive


def shared_mkdtemp(*args, **kwargs):
    """tempfile.mkdtemp, but group-accessible inside the run directory: cwltool makes each job's
    output and temporary directories with it (0700), and the job runs as another host user of
    the workspace's group."""
    path = _mkdtemp(*args, **kwargs)
    run_dir = os.environ.get("TRESOR_RUN_DIR", "")
    if run_dir and os.path.abspath(path).startswith(run_dir.rstrip("/") + "/"):
        os.chmod(path, 0o2770)
    return path


_mkdtemp = tempfile.mkdtemp


SCHEMA_CACHE_FILE = os.path.join(sys.prefix, "share", "tresor", "cwl-schemas.pickle")
SCHEMA_VERSIONS = ("v1.0", "v1.1", "v1.2")


def schema_stamp():
    """What a cache was made with: parsed schemas are objects of these packages' classes."""
    from importlib.metadata import version
    return tuple(version(name) for name in ("cwltool", "schema-salad", "ruamel.yaml"))


def write_schema_cache(path=SCHEMA_CACHE_FILE):
    import copyreg
    from schema_salad.ref_resolver import NormDict
    # NormDict keeps its key function in an attribute its own __init__ sets, which unpickling
    # would skip; rebuild it through __init__ instead.
    copyreg.pickle(NormDict, lambda d: (NormDict, (d.normalize,), None, None, iter(dict.items(d))))
    schemas = {v: cwltool.process.get_schema(v) for v in SCHEMA_VERSIONS}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = path + ".partial"
    with open(partial, "wb") as f:
        pickle.dump((schema_stamp(), schemas), f, protocol=pickle.HIGHEST_PROTOCOL)
    os.chmod(partial, 0o644)
    os.replace(partial, path)


def load_schema_cache(path=SCHEMA_CACHE_FILE):
    """Puts the parsed schemas in cwltool's cache; False (and cwltool parses them) when there is
    no cache, or one made with other versions."""
    try:
        with open(path, "rb") as f:
            stamp, schemas = pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, AttributeError, ImportError):
        return False
    if stamp != schema_stamp():
        return False
    cwltool.process.SCHEMA_CACHE.update(schemas)
    print(f"tresor_cwl: CWL schemas parsed in advance, from {path}", file=sys.stderr)
    return True


def main(argv):
    if argv == ["--write-schema-cache"]:
        write_schema_cache()
        return 0
    global tes
    tes = TesClient()
    run_dir = os.environ.get("TRESOR_RUN_DIR")
    if not run_dir:
        sys.exit("tresor_cwl: TRESOR_RUN_DIR is not set")
    # .tresor/ is tresor's and read-only; cwltool's scratch space is a directory of its own.
    work_dir = os.path.join(run_dir, ".cwl")
    tmp_dir, tmp_outdir = os.path.join(work_dir, "tmp"), os.path.join(work_dir, "out")
    for directory in (tmp_dir, tmp_outdir):
        os.makedirs(directory, exist_ok=True)
    # Inside the run directory, so that every task sees them at the same path.
    args = ["--disable-color", "--no-container",
            "--tmpdir-prefix", tmp_dir + "/", "--tmp-outdir-prefix", tmp_outdir + "/"]
    if not any(a == "--outdir" or a.startswith("--outdir=") for a in argv):
        args += ["--outdir", os.path.join(run_dir, "outputs")]
    tempfile.mkdtemp = shared_mkdtemp
    cwltool.job._job_popen = tes_popen
    cwltool.command_line_tool.CommandLineTool.make_job_runner = job_runner
    cwltool.main.MultithreadedJobExecutor = TresorMultithreadedJobExecutor
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, cancel_and_exit)
    out = io.StringIO()
    # cwltool drops its cached schemas at start unless it is handed its own way to set them
    # up; with the cache loaded, that way is to keep them. Extensions need their own schemas.
    keep_cached = "--enable-ext" not in argv and load_schema_cache()
    code = cwltool.main.main(
        args + argv, stdout=out, custom_schema_callback=(lambda: None) if keep_cached else None
    )
    sys.stdout.write(out.getvalue())
    if code == 0:
        try:
            outputs = json.loads(out.getvalue())
        except ValueError:
            outputs = None  # not a run (e.g. --validate): nothing to record
        if isinstance(outputs, dict):
            # The run's WES outputs: tresor reads this file for GetRunLog.
            with open(os.path.join(run_dir, "outputs.json"), "w") as f:
                json.dump(outputs, f, indent=2)
    return code


if __name__ == "__main__":
    status = main(sys.argv[1:])
    # Everything is written (the outputs, outputs.json, the log); tearing down cwltool's many
    # modules would only delay the run's end by tens of milliseconds.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status if isinstance(status, int) else 1)
