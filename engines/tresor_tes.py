"""A TES client for the workflow engines tresor runs: each job of an engine task becomes a TES task,
created through the run's identity socket ($TRESOR_IDENTITY_SOCKET), an HTTP/1.1 server on a Unix
socket that lists and controls only this run's tasks. Standard library only, thread-safe (each
request has a connection of its own: a Unix socket connects in microseconds).

Shared by snakemake_executor_plugin_tresor and tresor_cwl.py, which sit beside it.
"""

import http.client
import json
import os
import socket
import time

# Task states after which a task changes no more.
SUCCESS_STATES = {"COMPLETE"}
FAILURE_STATES = {"EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"}
# Seconds to wait before each retry of a request the server could not answer (5xx, refused, or
# its socket not there yet); about 6 s in all.
RETRY_DELAYS = (0.1, 0.2, 0.4, 0.8, 1.5, 3.0)
# How much of a failed task's stdout and stderr an error message quotes.
TAIL_CHARS = 4000


class TesError(Exception):
    """A request that tresor refused (its `msg`) or that could not reach it."""


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path, timeout):
        super().__init__("tresor", timeout=timeout)
        self.socket_path = socket_path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


class TesClient:
    def __init__(self, socket_path=None, timeout=30.0):
        self.socket_path = socket_path or os.environ.get("TRESOR_IDENTITY_SOCKET")
        if not self.socket_path:
            raise TesError("TRESOR_IDENTITY_SOCKET is not set: not running as a tresor engine task")
        self.timeout = timeout

    def request(self, method, path, body=None):
        """The decoded JSON answer to one request, retried while the server is unreachable or
        answers 5xx; TesError with the server's `msg` otherwise."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Tresor-Metadata": "true", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        for delay in RETRY_DELAYS + (None,):
            conn = _UnixHTTPConnection(self.socket_path, self.timeout)
            try:
                conn.request(method, path, body=data, headers=headers)
                response = conn.getresponse()
                status, raw = response.status, response.read()
            except (OSError, http.client.HTTPException) as e:
                status, raw = None, b""
                problem = f"{method} {path}: cannot reach tresor at {self.socket_path}: {e!r}"
                # A request that may have reached the server is repeated only if harmless:
                # repeating a POST could create a task twice.
                unsent = isinstance(e, (ConnectionRefusedError, FileNotFoundError))
                retry = unsent or method == "GET"
            else:
                if status < 300:
                    return json.loads(raw) if raw.strip() else {}
                problem = f"{method} {path}: tresor answered {status}: {_error_msg(raw)}"
                retry = status >= 500
            finally:
                conn.close()
            if delay is None or not retry:
                raise TesError(problem)
            time.sleep(delay)

    def create_task(self, task):
        return self.request("POST", "/ga4gh/tes/v1/tasks", task)["id"]

    def get_task(self, task_id):
        return self.request("GET", f"/ga4gh/tes/v1/tasks/{task_id}?view=FULL")

    def cancel_task(self, task_id):
        self.request("POST", f"/ga4gh/tes/v1/tasks/{task_id}:cancel", {})


def _error_msg(raw):
    try:
        return json.loads(raw)["msg"]
    except (ValueError, KeyError, TypeError):
        return raw.decode(errors="replace")[:500] or "(no body)"


def job_env(extra=None):
    """The environment a job needs: a task starts with a clean one. PYTHONPATH carries over so
    that a Snakemake job finds this plugin (and whatever the engine was given)."""
    env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "HOME": "/tmp"}
    # PYTHONPATH: a Snakemake job finds this plugin; USER and LOGNAME: the task's host user has
    # no passwd entry, and getpass.getuser() reads these first.
    # PYTHONSAFEPATH: the run's directory, a job's working directory, shadows no module.
    for name in ("PYTHONPATH", "PYTHONSAFEPATH", "USER", "LOGNAME"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    env.update(extra or {})
    return env


def split_names(value):
    """Secret names given as "A,B" or as a list."""
    if not value:
        return []
    items = value.split(",") if isinstance(value, str) else value
    return [str(name).strip() for name in items if str(name).strip()]


def task_document(name, image, shell_command, workdir, env, cpu_cores=None, ram_gb=None,
                  secret_env=(), secret_files=()):
    """A TES task running `shell_command` with /bin/sh in `workdir`. Secrets are named only:
    tresor puts their values in the task's environment or under $TRESOR_SECRETS_DIR."""
    task = {"name": name, "executors": [{
        "image": image, "command": ["/bin/sh", "-c", shell_command], "workdir": workdir,
        "env": env}]}
    resources = {}
    if cpu_cores:
        resources["cpu_cores"] = int(cpu_cores)
    if ram_gb:
        resources["ram_gb"] = float(ram_gb)
    if resources:
        task["resources"] = resources
    tags = {}
    if secret_env:
        tags["tresor.secrets.env"] = ",".join(secret_env)
    if secret_files:
        tags["tresor.secrets"] = ",".join(secret_files)
    if tags:
        task["tags"] = tags
    return task


def default_image():
    image = os.environ.get("TRESOR_JOB_IMAGE")
    if not image:
        raise TesError("the job names no image and TRESOR_JOB_IMAGE is not set")
    return image


def failure_message(task_id, task):
    """What a failed task left: its state, exit code, output tails and tresor's system logs."""
    lines = [f"TES task {task_id} ended {task.get('state')}"]
    run_logs = (task.get("logs") or [{}])[-1]
    for log in run_logs.get("logs") or []:
        if log.get("exit_code") is not None:
            lines[0] += f" (exit code {log['exit_code']})"
        for stream in ("stderr", "stdout"):
            text = (log.get(stream) or "").rstrip()
            if text:
                lines.append(f"--- {stream} (tail) ---\n{text[-TAIL_CHARS:]}")
    system_logs = run_logs.get("system_logs") or []
    if system_logs:
        lines.append("--- system logs ---\n" + "\n".join(system_logs))
    return "\n".join(lines)
