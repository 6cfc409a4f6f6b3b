"""Snakemake executor plugin `tresor` (`snakemake --executor tresor`): each job becomes a TES task
of the tresor run that this Snakemake is the engine of, created through $TRESOR_IDENTITY_SOCKET.

Snakemake finds it by its module name on PYTHONPATH (no install). The run directory is the same
path in the engine's sandbox and in every job's, so the file system is shared: a job is Snakemake
itself run again on that one job (`format_job_exec`), in the workflow's working directory.

Per rule, string resources name the secrets a job is given (never their values):
    resources: tresor_secrets_env="API_TOKEN,DB_PASSWORD", tresor_secrets="ssh_key"
The first become environment variables, the second files under $TRESOR_SECRETS_DIR.
"""

import signal
import threading
from dataclasses import dataclass, field
from typing import AsyncGenerator, List

from snakemake_interface_common.exceptions import WorkflowError
from snakemake_interface_executor_plugins.executors.base import SubmittedJobInfo
from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor
from snakemake_interface_executor_plugins.jobs import JobExecutorInterface
from snakemake_interface_executor_plugins.settings import CommonSettings, ExecutorSettingsBase

from tresor_tes import (
    FAILURE_STATES,
    SUCCESS_STATES,
    TesClient,
    TesError,
    default_image,
    failure_message,
    job_env,
    split_names,
    task_document,
)


@dataclass
class ExecutorSettings(ExecutorSettingsBase):
    # Snakemake's own --seconds-between-status-checks is a whole number of seconds (default 10),
    # far too slow for short jobs; this one (--tresor-poll-seconds) takes its place.
    poll_seconds: float = field(
        default=0.3,
        metadata={"help": "Seconds between two rounds of job status checks (fractions allowed)."},
    )


common_settings = CommonSettings(
    non_local_exec=True,
    # The run directory is bind-mounted at the same path into every job: Snakemake neither copies
    # sources nor deploys storage plugins into jobs, and it reads the jobs' outputs in place.
    implies_no_shared_fs=False,
    job_deploy_sources=False,
    auto_deploy_default_storage_provider=False,
    # Declared environment variables travel in the task's `env`, not as `export` in the command.
    pass_envvar_declarations_to_cmd=False,
    init_seconds_before_status_checks=0,
)


class Executor(RemoteExecutor):
    def __post_init__(self):
        self.tes = TesClient()
        self.next_seconds_between_status_checks = self.workflow.executor_settings.poll_seconds

    def run_jobs(self, jobs: List[JobExecutorInterface]):
        # Snakemake's SIGTERM handler, installed after this executor is made, only stops scheduling
        # and waits for the running jobs, which may take hours. tresor stops an engine with
        # SIGTERM: take it as Ctrl-C, upon which Snakemake cancels the active jobs and exits.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.default_int_handler)
        super().run_jobs(jobs)

    def run_job(self, job: JobExecutorInterface):
        # A group job has no image of its own: it runs in the default one.
        image = getattr(job, "container_img_url", None) or default_image()
        mem_mb = job.resources.get("mem_mb")
        task = task_document(
            name=job.name,
            image=image.removeprefix("docker://"),
            shell_command=self.format_job_exec(job),
            # The directory Snakemake was started in: the job's Snakemake resolves the workflow's
            # relative paths (and any `workdir:` directive) from there, as this one did.
            workdir=self.workflow.workdir_init,
            env=job_env(self.envvars()),
            cpu_cores=job.threads,
            ram_gb=mem_mb / 1024 if isinstance(mem_mb, (int, float)) and mem_mb > 0 else None,
            secret_env=split_names(job.resources.get("tresor_secrets_env")),
            secret_files=split_names(job.resources.get("tresor_secrets")),
        )
        try:
            task_id = self.tes.create_task(task)
        except TesError as e:
            raise WorkflowError(f"tresor did not accept job {job.jobid} ({job.name}): {e}")
        self.logger.info(f"Job {job.jobid} ({job.name}) is TES task {task_id}.")
        self.report_job_submission(SubmittedJobInfo(job=job, external_jobid=task_id))

    async def check_active_jobs(
        self, active_jobs: List[SubmittedJobInfo]
    ) -> AsyncGenerator[SubmittedJobInfo, None]:
        # One GET per active job and round; these run on the executor's own status thread, so
        # blocking on the socket holds up nothing else.
        for job_info in active_jobs:
            task_id = job_info.external_jobid
            async with self.status_rate_limiter:
                try:
                    task = self.tes.get_task(task_id)
                except TesError as e:
                    # Already retried for seconds: the task is gone or tresor is.
                    self.report_job_error(job_info, msg=f"cannot follow TES task {task_id}: {e}\n")
                    continue
            state = task.get("state")
            if state in SUCCESS_STATES:
                self.report_job_success(job_info)
            elif state in FAILURE_STATES:
                self.report_job_error(job_info, msg=failure_message(task_id, task) + "\n")
            else:
                yield job_info

    def cancel_jobs(self, active_jobs: List[SubmittedJobInfo]):
        # Called on SIGINT or SIGTERM (see run_jobs) and when the scheduler fails.
        for job_info in active_jobs:
            try:
                self.tes.cancel_task(job_info.external_jobid)
            except TesError as e:
                self.logger.warning(f"could not cancel TES task {job_info.external_jobid}: {e}")
