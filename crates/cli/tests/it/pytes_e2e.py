"""Drive tresor with the stock py-tes client: create, wait, logs, list with every filter and
paging, cancel, unknown id. Usage: pytes_e2e.py SERVER_URL STORAGE_DIR. Exits non-zero on failure."""

import os
import sys
import time

import requests
import tes
from tes.client import send_request, append_suffixes_to_url
from tes.utils import unmarshal

url, storage = sys.argv[1], sys.argv[2]
# Stock clients often speak only HTTP Basic; tresor takes an access token as the password.
client = tes.HTTPClient(url, timeout=30, user="researcher", password=os.environ["TRESOR_TOKEN"])


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}")
        sys.exit(1)
    print(f"ok: {what}")


def list_raw(**params):
    """ListTasks with filters py-tes's list_tasks does not expose, through py-tes's own request code."""
    kwargs = client._request_params(params=params)
    paths = append_suffixes_to_url(client.urls, ["/tasks"])
    return unmarshal(send_request(paths=paths, kwargs_requests=kwargs).json(), tes.ListTasksResponse)


info = client.get_service_info()
stype = info.type if isinstance(info.type, dict) else info.type.as_dict()
check(stype["artifact"] == "tes" and stype["version"] == "1.1.0", "service-info is TES 1.1.0")

task = tes.Task(
    name="pytes-md5",
    tags={"suite": "pytes", "kind": "md5"},
    inputs=[
        tes.Input(path="/data/input.txt", url=f"file://{storage}/input.txt"),
        tes.Input(path="/data/inline.txt", content="inline content\n"),
    ],
    outputs=[
        tes.Output(path="/data/sum.txt", url=f"file://{storage}/pytes/sum.txt"),
    ],
    executors=[
        tes.Executor(
            image="debian:12",
            command=["sh", "-c", "md5sum /data/input.txt | cut -d' ' -f1; cat /data/inline.txt"],
            stdout="/data/sum.txt",
        )
    ],
)
task_id = client.create_task(task)
check(bool(task_id), "create_task returns an id")
done = client.wait(task_id, timeout=60)
check(done.state == "COMPLETE", f"task completes (state {done.state})")

full = client.get_task(task_id, view="FULL")
log = full.logs[0]
check(log.logs[0].exit_code == 0, "executor log has exit code 0")
check("inline content" in log.logs[0].stdout, "executor stdout tail is in the FULL view")
check(log.outputs[0].path == "/data/sum.txt" and int(log.outputs[0].size_bytes) > 32, "output file log with size_bytes")
with open(f"{storage}/pytes/sum.txt") as f:
    check(len(f.read().splitlines()[0]) == 32, "output delivered to storage")
basic = client.get_task(task_id, view="BASIC")
check(basic.logs[0].logs[0].stdout is None, "BASIC omits stdout")
check(basic.inputs[1].content is None, "BASIC omits input content")
minimal = client.get_task(task_id, view="MINIMAL")
check(minimal.id == task_id and minimal.state == "COMPLETE" and minimal.name is None, "MINIMAL is id and state")

failing = client.create_task(tes.Task(name="pytes-fail", tags={"suite": "pytes"},
                                      executors=[tes.Executor(image="debian:12", command=["sh", "-c", "exit 7"])]))
check(client.wait(failing, timeout=60).state == "EXECUTOR_ERROR", "a failing executor gives EXECUTOR_ERROR")

# Every filter.
check([t.id for t in list_raw(name_prefix="pytes-md").tasks] == [task_id], "name_prefix filter")
check([t.id for t in list_raw(state="EXECUTOR_ERROR").tasks] == [failing], "state filter")
check({t.id for t in list_raw(tag_key="suite", tag_value="pytes").tasks} == {task_id, failing}, "tag filter")
check([t.id for t in list_raw(tag_key=["suite", "kind"], tag_value=["pytes", "md5"]).tasks] == [task_id], "two tag filters AND")
check({t.id for t in list_raw(tag_key="kind").tasks} == {task_id}, "tag_key without value matches any value")

# Paging with py-tes's own list_tasks.
for _ in range(3):
    client.create_task(tes.Task(name="pytes-page", executors=[tes.Executor(image="x", command=["true"])]))
seen, token = [], None
while True:
    page = client.list_tasks(view="MINIMAL", page_size=2, page_token=token)
    check(len(page.tasks) <= 2, "page size honoured")
    seen.extend(t.id for t in page.tasks)
    token = page.next_page_token
    if not token:
        break
check(len(seen) == 5 and len(set(seen)) == 5, f"paging returns every task once ({len(seen)})")

# Cancel a running sleep.
sleeper = client.create_task(tes.Task(name="pytes-sleep", executors=[tes.Executor(image="x", command=["sleep", "300"])]))
deadline = time.time() + 30
while client.get_task(sleeper).state != "RUNNING":
    check(time.time() < deadline, "sleeper reaches RUNNING")
    time.sleep(0.05)
client.cancel_task(sleeper)
check(client.get_task(sleeper).state == "CANCELED", "cancel makes the task CANCELED")

# Without a credential the API refuses, and says how to authenticate.
anonymous = tes.HTTPClient(url, timeout=30)
try:
    anonymous.list_tasks()
    check(False, "an anonymous list raises")
except requests.exceptions.HTTPError as e:
    check(e.response.status_code == 401 and "Bearer" in e.response.headers.get("WWW-Authenticate", ""), "no credential is a 401 with WWW-Authenticate")
bearer = tes.HTTPClient(url, timeout=30, token=os.environ["TRESOR_TOKEN"])
check(bearer.get_task(task_id).state == "COMPLETE", "the token also works as a bearer token")

# An unknown id is a 404.
try:
    client.get_task("no-such-task")
    check(False, "unknown id raises")
except requests.exceptions.HTTPError as e:
    check(e.response.status_code == 404, "unknown id is a 404")

print("py-tes e2e: all checks passed")
