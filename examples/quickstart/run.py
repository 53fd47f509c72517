"""Quick start: submit scripts/train.py to this machine and read back what happened."""

import os
import shlex
import shutil
import sys

from rundock import Environment, Experiment, ScriptRunConfig, Workspace

here = os.path.dirname(os.path.abspath(__file__))
ws = Workspace.create(here)  # .rundock/ beside this file: an embedded SQLite run history
exp = Experiment(workspace=ws, name="train-on-local")

env = Environment("user-managed-env")
env.python.user_managed_dependencies = True
env.python.interpreter_path = sys.executable

src = ScriptRunConfig(source_directory=os.path.join(here, "scripts"), script="train.py",
                      arguments=["--alpha", 0.5], environment=env)
run = exp.submit(src)
run.wait_for_completion(show_output=True)

print("States:")
for change in ws.store.status_history(run.id):
    print(f"  {change.status.value:<12} {change.detail}")
metrics = run.get_metrics()
print("Metrics:")
print(f"  alpha = {metrics['alpha']}")
print(f"  mse   = {len(metrics['mse'])} values, last {metrics['mse'][-1]:.5f}")
print(f"  fit   = {metrics['fit']}")
print("Files:")
for name in run.get_file_names():
    print(f"  {name}")
target = run.download_file("outputs/model.pkl", os.path.join(here, "model.pkl"))
print(f"Downloaded outputs/model.pkl to {target}")

# The run is in this folder's workspace (.rundock/ beside this file): the CLI reads it from here.
cli = os.path.join(os.path.dirname(sys.executable), "rundock")
on_path = shutil.which("rundock")
if on_path and os.path.exists(cli) and os.path.samefile(on_path, cli):
    command = "rundock"
elif os.path.exists(cli):
    command = shlex.quote(os.path.relpath(cli, here))
else:
    command = f"{shlex.quote(sys.executable)} -m rundock"
cd = "" if os.path.samefile(here, os.getcwd()) else f"cd {shlex.quote(os.path.relpath(here))} && "
print(f"\nTry the CLI next (this demo's runs are in {os.path.relpath(os.path.join(here, '.rundock'))}):")
for args in ("runs", f"show {run.id}", "experiments", "submit scripts/train.py -- --alpha 0.2",
             f"plot {run.id} mse", f"report {run.id} -o report.html", "ui    # the web UI, on 127.0.0.1"):
    print(f"  {cd}{command} {args}")
