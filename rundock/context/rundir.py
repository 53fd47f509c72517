"""The run directory: every entry in it, who writes it and who may read it (standard library only).

Everything a run produces is written here first, on the compute host, then
synced to the run history. The job is untrusted code: it runs with the run
directory as a writable place (a bind mount in a container), so nothing the
agent or a later reader does may trust what the job could have written,
except through the checks named below.

```
<agent root>/runs/<run_id>/
  job.json             the JobSpec (submitter or remote `start`); read by the agent
  manifest.json        the snapshot's manifest when the agent has no history (remote hosts)
  agent.lock           the agent holds an exclusive flock on it for its whole life: one agent per run
  agent.pid            the pid of the agent started by a remote `start`
  processes.json       written by the agent: its pid, the job's process group, the container; read by reapers
  members              every process of the job holds it open (inherited): how reapers find them all
  src/                 the materialized snapshot: the job's working directory
  src/outputs/         written by the job; every file ends up in the history (opened without following links)
  src/logs/            written by the job; streamed while the run is live
  agent_journal/agent.jsonl  the agent's records: the ONLY source of the run's own state changes and
                       heartbeats; never mounted into a container, never read from journal/
  journal/job-*.jsonl  the job's records: metrics, tags, properties, files staged in uploads/,
                       and the child runs it created (and their states); nothing else is read there
  uploads/             files the job staged for ``upload_file``; a job's file record may name only these
  cancel_requested     the submitter's cancel request (never visible to a container)
  requests/cancel      the job's own ``run.cancel()``
  requests/fail.json   the job's own ``run.fail()`` (the agent ends the run Failed after finalizing)
  requests/submit-<id>.json  the job's ``run.submit_child(config)`` (written by the job: source folder inside
                       src/, script, arguments, target, tags); read by the agent, never following links
  requests/submit-<id>.answer.json  written by the agent: {"run_id": ...} or {"error": ...}
  requests/children/<child id>.json  written by the agent (atomically): the status of each child it
                       submitted for the job, {"status", "error"}; read by the job's wait_for_completion
                       (the job could rewrite both: they are only its own view)
  system_logs/         prepare, driver (the job's stdout and stderr), finalize and agent logs
  secrets.json         the secrets this run may read (0600); removed by whoever ends the run
```

What a job may write: ``src/``, ``journal/job-*.jsonl``, ``uploads/`` and ``requests/``. A container
sees exactly those (and ``secrets.json``, read-only) under ``/rundock/run``; a host process can reach
more (it runs as the user), so every reader still checks what it reads: journal records are validated
by ``rundock.context.records``, file names and paths by ``rundock.context.names``, outputs are opened
without following links.
"""

from __future__ import annotations

import os

JOB_FILE = "job.json"
MANIFEST_FILE = "manifest.json"
AGENT_LOCK = "agent.lock"
AGENT_PID = "agent.pid"
PROCESSES_FILE = "processes.json"
MEMBERS_FILE = "members"
SRC_DIR = "src"
WATCHED_DIRS = ("outputs", "logs")  # under src/
JOURNAL_DIR = "journal"
AGENT_JOURNAL_DIR = "agent_journal"
UPLOADS_DIR = "uploads"
REQUESTS_DIR = "requests"
SYSTEM_LOGS_DIR = "system_logs"
SECRETS_FILE = "secrets.json"
CANCEL_FILE = "cancel_requested"  # the submitter's: outside what a job may write
JOB_CANCEL_FILE = "requests/cancel"  # the job's own run.cancel()
FAIL_FILE = "requests/fail.json"
SUBMIT_PREFIX = "submit-"  # requests/submit-<id>.json: the job's submit_child requests
ANSWER_SUFFIX = ".answer.json"  # requests/submit-<id>.answer.json: the agent's answers
CHILDREN_DIR = "requests/children"  # requests/children/<child id>.json: written by the agent
JOB_WRITABLE = (SRC_DIR, JOURNAL_DIR, UPLOADS_DIR, REQUESTS_DIR)

DRIVER_LOG = "driver_log.txt"
PREPARE_LOG = "prepare_log.txt"
FINALIZE_LOG = "finalize_log.txt"
AGENT_LOG = "agent_log.txt"

AGENT_SOURCE = "agent"
JOB_SOURCE_PREFIX = "job-"


def entry(run_dir: str, *parts: str) -> str:
    """The path of an entry of ``run_dir`` (``entry(d, SYSTEM_LOGS_DIR, DRIVER_LOG)``)."""
    return os.path.join(run_dir, *parts)


def is_agent_source(source: str) -> bool:
    """Whether journal records from ``source`` come from the run's agent (trusted with the run's state)."""
    return source == AGENT_SOURCE


def job_source(pid: int) -> str:
    """The journal source of one process of the job."""
    return f"{JOB_SOURCE_PREFIX}{pid}"
