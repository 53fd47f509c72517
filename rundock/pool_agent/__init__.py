"""``rundock agent serve``: GPU boxes that pull runs of a pool from the team server.

- ``serve``: the daemon's loop (register, long-poll, start, cancel, end);
- ``gpus``: this box's GPUs from ``nvidia-smi``;
- ``runner``: an assignment made into a run directory, a job file and a per-run agent process;
- ``adopt``: per-run agents a restarted daemon finds still running;
- ``docker_runner``: the containers of ``--docker`` runs, found and removed by run id and attempt;
- ``client``: the server's agent routes;
- ``service``: a systemd unit that keeps ``agent serve`` running.
"""
